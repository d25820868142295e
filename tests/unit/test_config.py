"""Config loading: defaults, dotted overrides, one clear message per problem."""

import pytest

from sfedlora.config import load_config
from sfedlora.errors import SfedloraError


def test_defaults_and_overrides():
    cfg = load_config(None, ["lora.rank=64", "fed.method=fedit", "train.lr=1e-3", "lora.targets=[query, key]"])
    assert cfg.lora.rank == 64 and cfg.fed.method == "fedit" and cfg.train.lr == 0.001
    assert cfg.lora.targets == ["query", "key"]
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.scaling=bogus", "lora.scaling must be one of"),
        ("lora.rank=0", r"LoRA rank \(lora.rank\) must be > 0"),
        ("fed.clients=0", r"number of clients N \(fed.clients\) must be > 0"),
        ("lora.alpha=0", r"LoRA alpha \(lora.alpha\) must be > 0"),
        ("lora.alpha=-2", "must be > 0"),
        ("lora.rank=2.5", "lora.rank must be int"),
        ("lora.bogus=1", "unknown config key lora.bogus"),
        ("train.optimizer=adam", "train.optimizer must be one of sgd, adamw"),
        ("fed.clients_per_round=9", "exceeds fed.clients"),
        ("norank", "not of the form key=value"),
        # no validation split: NaN validation everywhere, and "best on validation" became the untrained round 0
        ("data.val_fraction=0", r"data.val_fraction must be > 0, got 0.0: the best round.*untrained round 0"),
        ("data.val_fraction=-0.1", "data.val_fraction must be > 0"),
        ("data.test_fraction=0", r"data.test_fraction must be > 0, got 0.0: results are reported on"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(SfedloraError, match=message):
        load_config(None, [override])


def test_method_and_rule_choices_come_from_the_registry_and_core():
    """The schema takes its choices from the layers below it (the methods' registry, core.scaling's rules,
    core.adaptive's modes): no list of names is written twice; an unknown one is refused as the config loads."""
    from sfedlora.core.adaptive import MODES
    from sfedlora.core.scaling import RULES
    from sfedlora.methods import METHODS
    from sfedlora.runtime.resolve import check

    with pytest.raises(SfedloraError, match="fed.method must be one of " + ", ".join(METHODS) + "; got 'bogus'"):
        load_config(None, ["fed.method=bogus"])
    with pytest.raises(SfedloraError, match="lora.scaling must be one of auto, " + ", ".join(RULES)):
        load_config(None, ["lora.scaling=bogus"])
    with pytest.raises(SfedloraError, match="lora.adaptive must be one of " + ", ".join(MODES)):
        load_config(None, ["lora.adaptive=bogus"])
    assert check(load_config(None, ["fed.method=raflora"])).name == "raflora"


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SfedloraError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [rank: 8\n")
    with pytest.raises(SfedloraError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SfedloraError, match="must be a mapping"):
        load_config(scalar)


def test_the_generated_reference_is_current():
    """docs/configuration.md is generated from the schema; regenerate it with
    `sfedlora config --reference > docs/configuration.md` when this fails."""
    from pathlib import Path

    from sfedlora.config.reference import reference

    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert docs.read_text() == reference(), "docs/configuration.md is stale"


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_presets_state_only_what_they_change():
    """One source of defaults: the schema. A preset restating a default would hide a later change of it."""
    import yaml

    from sfedlora.config import CONFIG_DIR, builtin_configs, config_path, to_dict

    defaults = dict(_flat(to_dict(load_config(None))))
    presets = sorted(CONFIG_DIR.glob("*.yaml"))
    assert presets and builtin_configs() == sorted(["default", *(p.stem for p in presets)])
    for path in presets:
        loaded = dict(_flat(to_dict(load_config(path))))  # values as the schema types them (8 == 8.0)
        same = [k for k in dict(_flat(yaml.safe_load(path.read_text()))) if loaded[k] == defaults[k]]
        assert not same, f"{path.name} restates defaults: {same}"
        assert config_path(path.stem) == path
    assert config_path("default") is None and load_config(config_path("default")) == load_config(None)


def test_every_field_has_help_text():
    from sfedlora.config.load import checks

    assert all(f.metadata.get("help") for f in checks().values())


def test_a_key_named_twice_in_a_yaml_file_is_refused(tmp_path):
    """Plain YAML keeps the last of two equal keys without a word (before: rank 16 ran, rank 4 was lost)."""
    path = tmp_path / "twice.yaml"
    path.write_text("lora:\n  rank: 4\nfed:\n  rounds: 2\nlora:\n  rank: 16\n")
    with pytest.raises(SfedloraError, match=r"key 'lora' appears twice \(lines 1 and 5\)"):
        load_config(str(path))
    path.write_text("lora:\n  rank: 4\n  alpha: 2\n  rank: 8\n")
    with pytest.raises(SfedloraError, match=r"key 'rank' appears twice \(lines 2 and 4\)"):
        load_config(str(path))
    path.write_text("lora:\n  rank: 4\nfed:\n  rank: 4\n")  # the same name in two mappings is fine
    with pytest.raises(SfedloraError, match="fed.rank"):  # (and then an unknown key, said as such)
        load_config(str(path))


def test_yaml_anchors_and_merge_keys_still_work_and_odd_keys_are_yaml_errors(tmp_path):
    from sfedlora.config import read_yaml

    assert read_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n") == {"base": {"x": 1, "y": 2},
                                                                              "other": {"x": 1, "y": 3}}
    path = tmp_path / "odd.yaml"
    path.write_text("[a, b]: 1\n")
    with pytest.raises(SfedloraError, match=r"(?s)not valid YAML.*unhashable key"):
        load_config(str(path))


def test_a_runs_identity_leaves_out_only_what_it_writes():
    from sfedlora.config import not_results, written_only
    from sfedlora.runtime.rundir import config_hash

    written = set(written_only())
    assert {"keep_adapters", "keep_round_adapters", "checkpoint_every", "tracking", "name"} <= written
    assert written <= set(not_results()) and "seed" not in written and "train.lr" not in written
    base = config_hash(load_config(None, []))
    assert config_hash(load_config(None, ["keep_adapters=false", "checkpoint_every=0", "eval.samples=0"])) == base
    assert config_hash(load_config(None, ["seed=1"])) != base
    assert config_hash(load_config(None, ["train.lr=0.5"])) != base
