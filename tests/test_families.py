"""The model families and their suites: every suite under suites/ is a family's and every family has one, and the
families' default configurations partition the default matrix, each suite running its own."""

from pathlib import Path

from harness import cli
from harness.reference.families import FAMILIES
from harness.run import matrix


def test_each_suite_runs_its_familys_default_configurations():
    """The families' default configurations partition the default matrix: each runs in its own suite."""
    defaults = vars(cli.parser().parse_args(["run"]))
    checks = ("end_to_end", "layers", "perplexity")
    ids = {(family, check): {c.id for c in matrix.run_configs(lambda d: defaults[d], check, family)}
           for family in (*FAMILIES, None) for check in checks}
    assert ids["t5", "end_to_end"] == ids["t5", "layers"] == {f"toy-t5-{d}-tp1" for d in ("fp32", "fp16", "bf16")}
    assert not ids["t5", "perplexity"]
    assert ids["mixtral", "end_to_end"] == {"toy-moe-fp32-tp1"}
    for check in checks:
        families = [ids[f, check] for f in FAMILIES]
        assert set().union(*families) == ids[None, check] and sum(map(len, families)) == len(ids[None, check])


def test_every_suite_is_a_family_and_every_family_has_a_suite():
    suites = Path(__file__).resolve().parents[1] / "suites"
    assert sorted(p.name for p in suites.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) == \
        sorted(FAMILIES)


def test_a_named_model_runs_in_its_familys_suite_alone(tmp_path):
    """`pytest suites --model ...` checks each model once, in its family's suite; a Hugging Face directory's family
    is its config.json's model type's."""
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    defaults = vars(cli.parser().parse_args(["run"]))
    given = {**defaults, "model": [f"toy-t5,toy-gqa,{tmp_path}"], "dtype": ["fp32"]}
    ids = {family: [c.id for c in matrix.run_configs(given.get, "end_to_end", family)] for family in FAMILIES}
    assert ids == {"llama": ["toy-gqa-fp32-tp1"], "mixtral": [], "t5": ["toy-t5-fp32-tp1"],
                   "hf": [f"{tmp_path}-fp32-tp1"]}
    # Where no suite asks (the CLI, a user's own tests), every named model runs.
    assert len(matrix.run_configs(given.get, "end_to_end")) == 3
