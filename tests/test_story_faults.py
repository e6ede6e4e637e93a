"""Stage 1 (story) acceptance tests that need a real HTTP server, subprocesses or SIGKILL.

(a) a 3×2×4 movie completes against a server whose answers are ≥20% faulty;
(b) `dreamframe story` killed with SIGKILL during level 3 and restarted finishes, re-sending no answered request;
(c) the OPENAI_API_KEY value appears in no file under RUN;
(d) a bad theme/config is refused before any request reaches the server.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamframe.llm import LLM, LLMConfig, LocalLLMServer
from dreamframe.schema import Movie
from dreamframe.story import StoryConfig, expand_story, story_cli

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from dreamframe.cli import main; sys.exit(main())", "story"]
SMALL = ["--substories", "3", "--shots", "2", "--frames", "4"]


def _fast(base_url: str, **kw) -> LLMConfig:
    "Short timeouts and backoff, so injected faults cost milliseconds."
    return LLMConfig(**{"model": "local-test", "base_url": base_url, "timeout_s": 0.4, "retry_base_s": 0.005,
                        "retry_max_s": 0.05, "max_retries": 12, **kw})


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _asked(request: dict) -> str:
    "What a request asks, independent of transport details: its messages and response format."
    return json.dumps([request["messages"], request.get("response_format")], sort_keys=True)


def _cached_requests(run_dir: Path) -> dict[str, str]:
    "name -> asked, for every answered request in RUN/llm/."
    out = {}
    for path in (run_dir / "llm").glob("*.json"):
        entry = json.loads(path.read_text())
        out[_asked(entry["request"])] = entry["name"]
    return out


def test_completes_under_faults(tmp_path):
    cfg = StoryConfig("a lighthouse keeper adopts a stray dog", substories=3, shots=2, frames=4)
    with LocalLLMServer(fault_rate=0.5, seed=7, hang_s=1.0) as server:   # half the responses faulty
        llm = LLM(_fast(server.base_url, concurrency=8), cache_dir=tmp_path / "llm")
        movie = expand_story(cfg, llm, tmp_path, progress=False)
        counts = dict(server.counts)
    faults = counts["requests"] - counts.get("ok", 0)
    assert faults / counts["requests"] >= 0.2, counts
    assert llm.stats.failed == 0 and llm.stats.retries > 0
    loaded = Movie.load(tmp_path / "movie.json")
    assert loaded == movie
    assert (len(loaded.substories), len(loaded.shots), len(loaded.frames)) == (3, 6, 24)
    assert all(len(shot.frames) == 4 and len(shot.lines) == cfg.lines for shot in loaded.shots)
    assert {c.name for c in loaded.characters} >= {n for f in loaded.frames for n in f.characters}


def test_sigkill_resume_sends_no_answered_request_and_key_stays_out(tmp_path):
    run_dir = tmp_path / "run"
    key = "sk-test-" + secrets.token_hex(16)
    with LocalLLMServer(latency=0.25) as server:
        argv = CLI + [str(run_dir), "--theme", "a winter market", "--base-url", server.base_url, "--model", "local-test",
                      "--concurrency", "2", "--quiet", *SMALL]
        first = subprocess.Popen(argv, env=_env(OPENAI_API_KEY=key), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and first.poll() is None:
            if sum(name.startswith("level_3") for name in _cached_requests(run_dir).values()) >= 2:
                break
            time.sleep(0.01)
        assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()}"
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        answered = _cached_requests(run_dir)   # read after the kill: exactly what is on disk
        level3 = [n for n in answered.values() if n.startswith("level_3")]
        assert 2 <= len(level3) < 6, answered
        sent_before = len(server.requests)

        second = subprocess.run(argv, env=_env(OPENAI_API_KEY=key), capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        resent = [r for r in server.requests[sent_before:] if _asked(r) in answered]
        assert resent == [], f"{len(resent)} answered request(s) were sent again"
        assert len(server.requests) - sent_before >= 6 - len(level3)   # what was left was really sent
        logged = json.dumps(server.requests)

    movie = Movie.load(run_dir)
    assert (len(movie.substories), len(movie.shots), len(movie.frames)) == (3, 6, 24)
    # (c) the key is nowhere under RUN (cache, config, movie), nor in any request body the server saw
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.parent.name == "llm" for p in files) and (run_dir / "config.json").exists()
    leaks = [str(p) for p in files if key.encode() in p.read_bytes()]
    assert leaks == [] and key not in logged
    assert "local-test" in (run_dir / "config.json").read_text()   # the LLM config was saved, without the key


def test_bad_input_is_refused_before_any_request(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LocalLLMServer() as server:
        local = ["--base-url", server.base_url, "--quiet"]
        cases = [(["--theme", "   "] + local, "non-empty one-line theme"),
                 (["--theme", "x" * 900] + local, "at most 500"),
                 (["--theme", "a picnic", "--substories", "0"] + local, "substories=0"),
                 (["--theme", "a picnic", "--concurrency", "0"] + local, "concurrency=0"),
                 (["--theme", "a picnic", "--base-url", "https://llm.example.com/v1"], "OPENAI_API_KEY is not set")]
        for argv, message in cases:
            with pytest.raises(SystemExit) as exit_:
                story_cli([str(tmp_path / "run")] + argv)
            assert exit_.value.code == 2
            assert message in capsys.readouterr().err, argv
        llm = LLM(_fast(server.base_url))
        with pytest.raises(ValueError, match="max_prompt_tokens=100"):
            expand_story(StoryConfig("a picnic", max_prompt_tokens=100), llm, tmp_path / "run")
        with pytest.raises(TypeError, match="must be a StoryConfig"):
            expand_story({"theme": "a picnic"}, llm, tmp_path / "run")
        assert server.requests == []
    assert not (tmp_path / "run" / "movie.json").exists()
