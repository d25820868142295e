"""sfedlora on Flower (flwr 1.41 Message API): a ServerApp whose strategy delegates to sfedlora's methods,
a ClientApp running sfedlora's client training, the simulation engine and a local deployment."""
