"""What both runners share: set-up, what auto settings resolve to, the round protocol and its server, the round
loop, the record log, the run folder, state files and checkpoints, model loading."""
