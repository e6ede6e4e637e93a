"""`dreamframe run` survives SIGKILL anywhere: kill it during the story, the style training, the keyframes and the
export, restart it each time, and the finished run folder must equal an uninterrupted run's.

Both runs use the tiny stand-in SDXL and the local OpenAI-compatible test server (real HTTP, a little latency so
the story takes long enough to be killed in). The kill points are found by watching the run folder for files
appearing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamframe.testing import LocalLLMServer

THEME = "a lighthouse keeper finds a message in a bottle"
SMALL = ["--preset", "demo", "--substories", "2", "--shots", "2", "--frames", "3", "--style-steps", "6",
         "--style-checkpoint-every", "1", "--style-image-steps", "2", "--batch-size", "1", "--negative-prompt", "blurry",
         "--qa-llm-items", "2", "--eval-lpips-size", "64", "--quiet"]

# Files whose bytes legitimately differ between two runs, and why. Everything else must be byte-identical.
NOT_COMPARED_AS_BYTES = {
    "frames/manifest.jsonl": "per-frame `seconds` is a wall-clock timing (compared on the other fields)",
    "config.json": "compared as JSON, minus the LLM server's base_url (a new port each run)",
    "pipeline.json": "records when each stage finished (compared without the times)",
    "eval/metrics.json": "records the absolute run folder path (compared as JSON without `run_dir`)",
    "style/checkpoints/*.safetensors, style/embedding.safetensors": "safetensors writes its metadata map in hash order, "
                                       "which varies between processes (compared as tensors + metadata)",
}
NOT_COMPARED_PREFIXES = {
    "llm/": "the cache's request files hold the server URL and port (compared by file name = request hash)",
    "_tiny_model/": "the stand-in model itself (built from a fixed seed; compared by file name)",
}
# Timing-dependent fields of manifest lines: `seconds`; `model` is the tiny model's path inside each run folder.
MANIFEST_VARYING = {"seconds", "model"}


def _command(run_dir: Path, base_url: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dreamframe")), "run", str(run_dir), "--theme", THEME, *SMALL,
            "--llm-model", "local-test", "--base-url", base_url]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OPENAI_API_KEY": "not-needed-for-the-local-server"}


def _files(run_dir: Path) -> dict[str, Path]:
    return {p.relative_to(run_dir).as_posix(): p for p in run_dir.rglob("*") if p.is_file()}


# Kill points: a predicate on the run folder that becomes true while the named stage is running.
def _story_started(run: Path) -> bool:
    return any((run / "llm").glob("*.json")) and not (run / "style").exists()

def _style_training(run: Path) -> bool:
    return any((run / "style" / "checkpoints").glob("step-*.safetensors")) and not (run / "style" / "embedding.safetensors").exists()

def _keyframes_half(run: Path) -> bool:
    manifest = run / "frames" / "manifest.jsonl"
    return manifest.exists() and 2 <= len(manifest.read_text().splitlines()) < 12

def _export_started(run: Path) -> bool:
    return (run / "export").exists() and not (run / "export" / "movie.mp4").exists()

KILL_POINTS = [("story", _story_started), ("style", _style_training), ("keyframes", _keyframes_half), ("export", _export_started)]


def _run_until(command: list[str], run_dir: Path, point, timeout: float = 120) -> str:
    "Start `command`; SIGKILL it as soon as `point(run_dir)` holds. Returns 'killed' or 'finished' (it ended first)."
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                assert process.returncode == 0, f"dreamframe run failed:\n{process.stderr.read()[-3000:]}"
                return "finished"
            try: hit = point(run_dir)
            except OSError: hit = False  # a file vanished between listing and reading
            if hit:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return "killed"
            time.sleep(0.01)
        pytest.fail(f"no kill point reached within {timeout}s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def _finish(command: list[str]) -> None:
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"dreamframe run failed:\n{result.stderr[-3000:]}"


def _manifest(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in MANIFEST_VARYING} for line in path.read_text().splitlines()]


def _same_safetensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()): return False
        return all(fa.get_tensor(k).equal(fb.get_tensor(k)) for k in fa.keys())


def _metrics(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    metrics.pop("run_dir", None)
    return metrics


def _records(path: Path) -> dict:
    stages = json.loads(path.read_text())["stages"]
    return {stage: {k: v for k, v in record.items() if k != "at"} for stage, record in stages.items()}


def _config(path: Path) -> dict:
    config = json.loads(path.read_text())
    for stage in config.values():
        if isinstance(stage, dict):
            stage.pop("base_url", None)
            if isinstance(stage.get("llm"), dict): stage["llm"].pop("base_url", None)
    return config


def test_killed_and_restarted_run_equals_uninterrupted(tmp_path):
    with LocalLLMServer(latency=0.2) as server:
        reference = tmp_path / "uninterrupted" / "run"  # same folder name: the viewer and the metrics record it
        # the uninterrupted run goes on in the background (2 cores) while the other one is killed and restarted
        uninterrupted = subprocess.Popen(_command(reference, server.base_url), env=_env(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)

        killed = tmp_path / "killed" / "run"
        command = _command(killed, server.base_url)
        outcomes = {}
        for stage, point in KILL_POINTS:
            outcomes[stage] = _run_until(command, killed, point)
            if outcomes[stage] == "finished": break
        _finish(command)
        _stdout, stderr = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, f"the uninterrupted dreamframe run failed:\n{stderr[-3000:]}"

    print("kills:", outcomes)
    assert sum(o == "killed" for o in outcomes.values()) >= 3, f"too few kills landed mid-run: {outcomes}"

    expected, got = _files(reference), _files(killed)
    leftovers = [name for name in got if name != ".lock" and (name.endswith((".tmp", ".tmpdir")) or "/." in "/" + name or ".tmpdir/" in name)]
    assert not leftovers, f"partial files left after the restarts: {leftovers}"
    assert sorted(got) == sorted(expected), (f"file sets differ: only in the killed run {sorted(set(got) - set(expected))}, "
                                             f"only in the reference {sorted(set(expected) - set(got))}")
    differing = []
    for name, path in expected.items():
        if any(name.startswith(prefix) for prefix in NOT_COMPARED_PREFIXES): continue
        if name == "frames/manifest.jsonl": same = _manifest(path) == _manifest(got[name])
        elif name == "config.json": same = _config(path) == _config(got[name])
        elif name == "pipeline.json": same = _records(path) == _records(got[name])
        elif name == "eval/metrics.json": same = _metrics(path) == _metrics(got[name])
        elif name.startswith("style/checkpoints/") or name == "style/embedding.safetensors": same = _same_safetensors(path, got[name])
        else: same = path.read_bytes() == got[name].read_bytes()
        if not same: differing.append(name)
    assert not differing, f"files differ between the killed-and-restarted run and the uninterrupted one: {differing}"
    for name in ("export/llava.json", "export/qa.jsonl", "qa.json", "movie.json", "style/embedding.safetensors"):
        assert name in expected
    assert sum(name.startswith("frames/") and name.endswith(".png") for name in expected) == 12
