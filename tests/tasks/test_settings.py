"""Every stage knob is declared once (tasks/settings.py): each form holds every knob of its
stages with the stage's default, bounds and description, a value set on a form reaches the stage
config, and a bad value or mix is refused naming the form's field."""

import ast
import dataclasses
from pathlib import Path

import pytest

from tasks.configs import EvaluateFlowConfig, ExperimentConfig, RLFlowConfig, StudyConfig
from tasks.evaluate import EvalConfig
from tasks.inputs import Inputs
from tasks.plan import Cell, eval_config, study_grpo_config, train_config
from tasks.profiles import PROFILES
from tasks.rl import GRPOConfig
from tasks.settings import knobs
from tasks.train import TrainConfig

INPUTS = Inputs("/m/teacher", "/m/student", "/d/train.jsonl", "/d/held_out.jsonl",
                ("/d/test.jsonl",))
STUDY_RL_FOLLOWS_THE_STUDY = {"max_new_tokens", "temperature", "prompt_template", "seed"}
FORMS = [  # (form, stage, prefix, knobs the form leaves to others)
    (ExperimentConfig, TrainConfig, "", set()),
    (StudyConfig, TrainConfig, "", set()),
    (ExperimentConfig, EvalConfig, "eval_", set()),
    (StudyConfig, EvalConfig, "eval_", set()),
    (RLFlowConfig, EvalConfig, "eval_", set()),
    (EvaluateFlowConfig, EvalConfig, "", set()),
    (RLFlowConfig, GRPOConfig, "", set()),
    (StudyConfig, GRPOConfig, "rl_", STUDY_RL_FOLLOWS_THE_STUDY),
]


@pytest.mark.parametrize(("form", "stage", "prefix", "left"), FORMS,
                         ids=[f"{f.__name__}-{s.__name__}" for f, s, *_ in FORMS])
def test_every_knob_is_on_the_form_with_the_stages_default_and_description(form, stage, prefix,
                                                                           left):
    for knob in knobs(stage):
        if knob.name in left:
            continue
        field = form.model_fields.get(prefix + knob.name)
        assert field is not None, f"{stage.__name__}.{knob.name} is not on {form.__name__}"
        default = list(knob.default) if isinstance(knob.default, tuple) else knob.default
        assert field.default == default, (form.__name__, knob.name)
        assert field.description.endswith(knob.metadata["setting"]["description"])


def test_the_knobs_the_issue_names_are_reachable_from_a_study():
    for name in ("mixed_precision", "micro_batch_size", "fused_loss", "warmup_steps",
                 "weight_decay", "temperature", "rollout_seed", "entropy_prompts"):
        assert name in StudyConfig.model_fields and name in ExperimentConfig.model_fields


def test_a_value_set_on_the_form_reaches_the_stage_config(tmp_path):
    changed = {"mixed_precision": "bf16", "micro_batch_size": 2, "fused_loss": "off",
               "warmup_steps": 3, "weight_decay": 0.1, "temperature": 2.0, "rollout_seed": 7,
               "entropy_prompts": 5, "learning_rate": 1e-3, "checkpoint_every": 4}
    study = StudyConfig(**changed, eval_top_p=0.9, eval_greedy=False, rl_cells=["opd"],
                        rl_clip_eps=0.3, rl_kl_coef=0.05)
    train = train_config(study, INPUTS, Cell("sft"), 0, tmp_path)
    assert {name: getattr(train, name) for name in changed} == changed
    evaluation = eval_config(study, INPUTS, "m")
    assert evaluation.top_p == 0.9 and evaluation.greedy is False
    grpo = study_grpo_config(study, INPUTS, "/ckpt", 3, tmp_path)
    assert (grpo.clip_eps, grpo.kl_coef, grpo.seed) == (0.3, 0.05, 3)
    assert grpo.max_new_tokens == study.max_new_tokens  # a study's GRPO follows its cap


def test_the_forms_and_the_stages_share_one_set_of_defaults():
    """A form left as it is and a stage config made without a form agree on every knob: the
    same run from the UI, a YAML file and `python -m tasks.train`."""
    bare = TrainConfig("sft", "/m/teacher", "/m/student", "/d/train.jsonl", "/out",
                       held_out_problems="/d/held_out.jsonl")
    from_form = train_config(ExperimentConfig(), INPUTS, Cell("sft"), 0, "/out")
    for knob in knobs(TrainConfig):
        assert getattr(bare, knob.name) == getattr(from_form, knob.name), knob.name
    assert EvalConfig("m", INPUTS.benchmarks) == eval_config(ExperimentConfig(), INPUTS, "m")


@pytest.mark.parametrize(("profile", "template", "cap", "eval_cap"), [
    (p.name, p.prompt_template, p.train_cap, p.eval_cap) for p in PROFILES.values()])
def test_an_empty_profile_knob_takes_the_profiles_value(profile, template, cap, eval_cap):
    study = StudyConfig(profile=profile)
    assert (study.prompt_template, study.max_new_tokens, study.eval_max_new_tokens) == (
        template, cap, eval_cap)
    assert StudyConfig(profile=profile, max_new_tokens=40).max_new_tokens == 40


@pytest.mark.parametrize(("fields", "message"), [
    ({"objective": "sfx"}, "objective 'sfx': must be sft, dagger, offline_rl, opd, teacher:λ or "
                           "student:λ"),
    ({"loss": "sparse"}, "training sft: loss='sparse' with cache_k=0"),
    ({"cache_k": 8}, "loss='exact' with cache_k=8"),
    ({"eval_n": 2, "eval_ks": [1, 4]}, "eval_ks=[1, 4] has k=4 > eval_n=2"),
    ({"eval_temperature": 0.0}, "eval_n"),
    ({"mixed_precision": "bf17"}, "mixed_precision"),
    ({"curriculum": [32, 16], "min_entropy": 0.1}, "strictly increasing"),
    ({"loss": "sampled", "objective": "offline_rl"}, "needs response tokens sampled"),
])
def test_a_bad_form_is_refused_naming_its_fields(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ExperimentConfig(**fields)


def test_a_study_checks_each_cell_and_its_grpo_knobs():
    StudyConfig(cells=["sft", "opd"], loss="sparse", cache_k=8)  # opd trains exact
    with pytest.raises(ValueError, match="rl_group_size"):
        StudyConfig(rl_cells=["opd"], rl_group_size=1)


def test_the_objective_text_becomes_a_typed_objective_once(tmp_path):
    config = TrainConfig("student:0.25", "/t", "/s", "/p", str(tmp_path))
    assert config.objective.on_policy and config.objective.reverse_weight == 0.25
    again = TrainConfig(**{**dataclasses.asdict(config), "objective": config.objective.name})
    assert again == config and again.fingerprint() == config.fingerprint()


def _runtime_imports(path: Path) -> set[str]:
    """The tasks.* modules a module imports when it runs (imports under TYPE_CHECKING, for
    annotations only, do not run)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", "") == "TYPE_CHECKING"
               for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tasks.")}
    return found


def test_the_tasks_package_has_no_import_cycle():
    package = Path(__file__).resolve().parents[2] / "tasks"
    graph = {f"tasks.{p.stem}": _runtime_imports(p) for p in package.glob("*.py")}

    def cycle_from(module, trail):
        if module in trail:
            return trail[trail.index(module):] + [module]
        for imported in sorted(graph.get(module, ())):
            found = cycle_from(imported, trail + [module])
            if found:
                return found
        return None

    for module in graph:
        assert cycle_from(module, []) is None, " -> ".join(cycle_from(module, []))
