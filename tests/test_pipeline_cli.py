"""`dreamframe run`, `run-many` and `status` on the command line: settings remembered in RUN/config.json, one-line
errors, a failing movie that does not stop the others, the refiner reaching the keyframes."""
import json

from dreamframe.cli import main
from dreamframe.pipeline import STAGES, pipeline_settings, plan_stage, status
from dreamframe.run_many import read_themes

SMALL = ["--preset", "demo", "--substories", "1", "--shots", "1", "--frames", "2", "--quiet"]


def done(run, stage) -> bool:
    settings, stages = pipeline_settings(run, STAGES)
    return plan_stage(stage, run, settings).finished


def test_run_remembers_its_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(run), "--theme", "a fox learns to sail", *SMALL, "--only", "story"]) == 0
    assert done(run, "story") and not done(run, "qa")
    saved = json.loads((run / "config.json").read_text())
    assert saved["models"]["model"] == "tiny" and saved["llm"]["model"] == "scripted"
    assert saved["story"]["theme"] == "a fox learns to sail" and saved["story"]["frames"] == 2
    # no options at all: the theme, the models and the sizes come from RUN/config.json
    assert main(["run", str(run), "--only", "story,qa", "--quiet"]) == 0
    assert done(run, "qa")
    out = capsys.readouterr().out
    assert "story      done" in out and "qa         done" in out


def test_run_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "fresh"
    assert main(["run", str(run), "--theme", "a fox", *SMALL, "--set", "frames.steps=2"]) == 1
    assert "unknown settings section(s) ['frames']" in capsys.readouterr().err
    assert main(["run", str(run), "--theme", "a fox", *SMALL, "--set", "keyframes.size=64"]) == 1
    assert "KeyframeConfig has no setting(s) ['size']" in capsys.readouterr().err
    assert main(["run", str(run), "--theme", "a fox", *SMALL, "--only", "story,frames"]) == 1
    assert "unknown stage(s) ['frames']" in capsys.readouterr().err
    assert main(["run", str(run), "--theme", "a fox", *SMALL, "--steps", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps" in err[0] and "greater than or equal to 1" in err[0]
    assert main(["status", str(tmp_path / "missing")]) == 1


def test_run_many_keeps_going_past_a_failed_movie(tmp_path, capsys):
    themes = tmp_path / "themes.txt"
    themes.write_text("# one movie per line\na fox learns to sail\n\na broken movie\nan owl opens a bakery\n")
    assert len(read_themes(themes)) == 3
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a-broken-movie").write_text("a file where the run folder should be")
    assert main(["run-many", str(themes), str(tmp_path / "out"), *SMALL, "--only", "story"]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 movies complete" in out and "a-broken-movie" in out and "FAILED: FileExistsError" in out
    for slug in ("a-fox-learns-to-sail", "an-owl-opens-a-bakery"):
        assert done(tmp_path / "out" / slug, "story"), status(tmp_path / "out" / slug)


def test_run_with_a_refiner(tmp_path):
    "`--refiner` reaches the keyframes stage when keyframes.refiner_steps > 0 (tiny base + tiny refiner, 64 px)."
    run = tmp_path / "refined"   # the demo preset has a style stage, so the frames need its embedding: style runs too
    assert main(["run", str(run), "--theme", "a fox learns to sail", *SMALL, "--refiner", "tiny", "--refiner-steps", "1",
                 "--negative-prompt", "blurry", "--only", "story,style,characters,keyframes"]) == 0
    assert done(run, "keyframes")
    manifest = [json.loads(line) for line in (run / "frames" / "manifest.jsonl").read_text().splitlines()]
    assert {record["refiner_steps"] for record in manifest} == {1} and "+ tiny" in manifest[0]["model"]
