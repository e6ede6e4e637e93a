"""Stage 1 (story) acceptance tests that need a real HTTP server, subprocesses or SIGKILL.

(a) a 3×2×4 movie completes against a server whose answers are ≥20% faulty;
(b) a story process killed with SIGKILL during level 3 and restarted finishes, re-sending no answered request;
(c) the OPENAI_API_KEY value appears in no file under RUN;
(d) bad settings and arguments are refused before any request reaches the server;
(e) text that would break a later stage (a `<image>` placeholder, an oversized prompt) is repaired by the LLM, never saved.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dreamframe.config import ConfigError
from dreamframe.llm import LLM, LLMConfig
from dreamframe.schema import Movie
from dreamframe.story import StoryConfig, expand_story
from dreamframe.testing import LocalLLMServer, schema_instance

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _fast(base_url: str, **kw) -> LLMConfig:
    "A short deadline, stalls given up after 0.4 s, millisecond backoff, so injected faults cost little."
    return LLMConfig(**{"model": "local-test", "base_url": base_url, "timeout_s": 20, "stall_s": 0.4, "retry_base_s": 0.005,
                        "retry_max_s": 0.05, "max_retries": 12, **kw})


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _asked(request: dict) -> str:
    "What a request asks: its messages and response format."
    return json.dumps([request["messages"], request.get("response_format")], sort_keys=True)


def _cached_requests(run_dir: Path) -> dict[str, str]:
    "asked -> name, for every answered request in RUN/llm/."
    out = {}
    for path in (run_dir / "llm").glob("*.json"):
        try: entry = json.loads(path.read_text())
        except ValueError: continue
        out[_asked(entry["request"])] = entry["name"]
    return out


def test_completes_under_faults(tmp_path):
    cfg = StoryConfig("a lighthouse keeper adopts a stray dog", substories=3, shots=2, frames=4)
    faults = ("429", "500", "stall", "not_json", "bad_schema", "truncated", "half_json", "cut", "reset")
    with FaultServer(faults=faults, rate=0.5, seed=7, hang_s=1.0) as server:   # half the responses faulty
        llm = LLM(_fast(server.base_url, concurrency=8), cache_dir=tmp_path / "llm")
        movie = expand_story(cfg, llm, tmp_path, progress=False)
        counts = dict(server.counts)
    assert (counts["requests"] - counts.get("ok", 0)) / counts["requests"] >= 0.2, counts
    assert llm.stats.failed == 0 and llm.stats.retries > 0
    loaded = Movie.load(tmp_path / "movie.json")
    assert loaded == movie
    assert (len(loaded.substories), len(loaded.shots), len(loaded.frames)) == (3, 6, 24)
    assert all(len(shot.frames) == 4 and len(shot.lines) == cfg.lines for shot in loaded.shots)
    assert {c.name for c in loaded.characters} >= {n for f in loaded.frames for n in f.characters}


STORY_SCRIPT = textwrap.dedent("""
    import os, sys
    from dreamframe.llm import LLM, LLMConfig
    from dreamframe.story import StoryConfig, expand_story
    run_dir, base_url = sys.argv[1], sys.argv[2]
    llm = LLM(LLMConfig(model="local-test", base_url=base_url, concurrency=2, timeout_s=30), cache_dir=f"{run_dir}/llm")
    movie = expand_story(StoryConfig("a winter market", substories=3, shots=2, frames=4), llm, run_dir, progress=False)
    print(len(movie.frames))
""")


def test_sigkill_resume_sends_no_answered_request_and_key_stays_out(tmp_path):
    run_dir = tmp_path / "run"
    key = "sk-test-" + secrets.token_hex(16)
    with LocalLLMServer(latency=0.25) as server:
        argv = [sys.executable, "-c", STORY_SCRIPT, str(run_dir), server.base_url]
        first = subprocess.Popen(argv, env=_env(OPENAI_API_KEY=key), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and first.poll() is None:
            if sum(name.startswith("level_3") for name in _cached_requests(run_dir).values()) >= 2: break
            time.sleep(0.01)
        assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()}"
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        answered = _cached_requests(run_dir)   # read after the kill: exactly what is on disk
        level3 = [n for n in answered.values() if n.startswith("level_3")]
        assert 2 <= len(level3) < 6, answered
        sent_before = len(server.requests)

        second = subprocess.run(argv, env=_env(OPENAI_API_KEY=key), capture_output=True, text=True, timeout=60)
        assert second.returncode == 0 and second.stdout.split() == ["24"], second.stderr
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


def test_bad_input_is_refused_before_any_request(tmp_path):
    with LocalLLMServer() as server:
        for make, message in [(lambda: StoryConfig("   "), "must not be empty"),
                              (lambda: StoryConfig("x" * 900), "at most 500 characters"),
                              (lambda: StoryConfig("a picnic", substories=0), "substories"),
                              (lambda: StoryConfig("a picnic", max_prompt_tokens=100), "less than or equal to 77"),
                              (lambda: LLMConfig(concurrency=0), "concurrency")]:
            with pytest.raises(ConfigError, match=message): make()
        llm = LLM(_fast(server.base_url))
        with pytest.raises(TypeError, match="must be a StoryConfig"):
            expand_story({"theme": "a picnic"}, llm, tmp_path / "run")
        with pytest.raises(ValueError, match="no CLIP tokenizer there"):
            expand_story(StoryConfig("a picnic", tokenizer=str(tmp_path)), llm, tmp_path / "run")
        assert server.requests == []
    assert not (tmp_path / "run" / "movie.json").exists()


def test_text_that_would_break_later_stages_is_repaired_not_saved(tmp_path):
    "A dialogue line holding `<image>` and a 5,000-character prompt go back to the LLM; movie.json never holds them."
    def careless_until_told(request):
        schema = request["response_format"]["json_schema"]["schema"]
        answer = schema_instance(schema, seed=len(request["messages"]), text=request["messages"][1]["content"])
        if "frames" in answer and len(request["messages"]) == 2:   # the first answer of each shot, not its repair
            answer["lines"][0]["text"] = "Look at this <image> of the harbour."
            answer["frames"][1]["prompt"] = "In the harbour, " + "a very long description " * 220
        return json.dumps(answer)
    with LocalLLMServer(answer=careless_until_told) as server:
        llm = LLM(_fast(server.base_url, concurrency=8), cache_dir=tmp_path / "llm")
        movie = expand_story(StoryConfig("a picnic", substories=2, shots=2, frames=3), llm, tmp_path, progress=False)
    assert llm.stats.repairs == 4 and llm.stats.failed == 0   # one repair round per shot
    text = (tmp_path / "movie.json").read_text()
    assert "<image>" not in text and "a very long description" not in text
    assert all(len(f.prompt) <= 400 for f in movie.frames)

