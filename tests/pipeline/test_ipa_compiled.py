"""The compiled ipa pipeline: rounds are real KFP steps under nested conditions, the number of
rounds is a pipeline parameter, and the verifier's credentials come from an optional Secret."""

import yaml
from visalign_pipelines import compile as compile_mod
from visalign_pipelines import settings

from visalign import recipes
from visalign.ipa import verify


def _spec():
    docs = list(yaml.safe_load_all((compile_mod.COMPILED_DIR / "ipa.yaml").read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _walk(spec, dag, conditions=()):
    """(task name, display name, component, enclosing conditions) for every task, nested DAGs included."""
    for name, task in dag["tasks"].items():
        comp = spec["components"][task["componentRef"]["name"]]
        cond = task.get("triggerPolicy", {}).get("condition")
        if "dag" in comp:
            yield from _walk(spec, comp["dag"], conditions + ((cond,) if cond else ()))
        else:
            yield name, task["taskInfo"]["name"], task["componentRef"]["name"], conditions


def test_every_round_is_its_own_step_under_its_condition():
    spec, _ = _spec()
    tasks = {display: conds for _, display, _, conds in _walk(spec, spec["root"]["dag"])}
    for r in (1, 2, 3):
        assert f"round {r}: sample + revise" in tasks and f"round {r}: verify + pairs" in tasks
    assert tasks["round 1: sample + revise"] == ()  # round 1 always runs
    assert [c.split(" ")[-2:] for c in tasks["round 2: sample + revise"]] == [[">=", "2"]]
    assert [c.split(" ")[-2:] for c in tasks["round 3: sample + revise"]] == [[">=", "2"], [">=", "3"]]
    assert all("pipelinechannel--rounds" in c for c in tasks["round 3: verify + pairs"])
    assert {d for d in tasks if d.startswith("train")} == {
        "train after round 1", "train after round 2", "train final (1 round)", "train final (2 rounds)",
        "train final (3 rounds)"}


def test_later_rounds_get_the_trained_policy_and_the_previous_state():
    spec, _ = _spec()
    by_display = {display: name for name, display, _, _ in _walk(spec, spec["root"]["dag"])}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {n: t for dag in dags for n, t in dag["tasks"].items()}
    collect2 = tasks[by_display["round 2: sample + revise"]]["inputs"]["artifacts"]
    assert set(collect2) == {"prompts", "policy", "state"}
    collect1 = tasks[by_display["round 1: sample + revise"]]["inputs"]["artifacts"]
    assert set(collect1) == {"prompts"}


def test_rounds_parameter_defaults_to_the_recipe():
    spec, _ = _spec()
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["rounds"]["defaultValue"] == recipes.load("ipa").ipa.rounds
    assert recipes.IPA_MAX_ROUNDS == 3


def test_verifier_secret_is_optional_env_on_the_pairs_steps_only():
    spec, k8s = _spec()
    s = settings.Secrets()
    assert s.verifier_keys == (verify.ENV_URL, verify.ENV_MODEL, verify.ENV_KEY)
    for name, _, comp, _ in _walk(spec, spec["root"]["dag"]):
        executor = spec["components"][comp]["executorLabel"]
        secrets = [x for x in k8s.get(executor, {}).get("secretAsEnv", []) if x["secretName"] == s.verifier_secret]
        if comp.startswith("comp-ipa-pairs"):
            assert secrets and secrets[0]["optional"] is True, name
            assert {kv["envVar"] for kv in secrets[0]["keyToEnv"]} == set(s.verifier_keys)
        else:
            assert not secrets, name


def test_pairs_steps_are_never_cached():
    """With the endpoint verifier a cached pairs step would replay old verdicts, an outage's too."""
    spec, _ = _spec()
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = [t for dag in dags for t in dag["tasks"].values()]
    cached = {t["taskInfo"]["name"]: t.get("cachingOptions", {}).get("enableCache", False) for t in tasks
              if t["componentRef"]["name"].startswith(("comp-ipa-pairs", "comp-ipa-collect"))}
    assert {name for name, on in cached.items() if not on} == {f"round {r}: verify + pairs" for r in (1, 2, 3)}
    assert all(cached[f"round {r}: sample + revise"] for r in (1, 2, 3))  # collect stays cached
