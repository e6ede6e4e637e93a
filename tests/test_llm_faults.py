"""The LLM client against a real local HTTP server: faults, concurrency, the cache, resume after SIGKILL, secrets.

These complement notebooks 01_llm / 90_testing with checks that need many calls, timing or a subprocess;
`test_llm_hostile.py` has the hostile-server cases (huge, trickling, refused, truncated, bad answers)."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from dreamframe.config import ConfigError
from dreamframe.llm import (LLM, LLMAnswerError, LLMConfig, LLMTransportError, _SCHEMA_PROMPT, _retry_after, request_key, run_sync,
                            strict_schema)
from dreamframe.testing import LocalLLMServer, ScriptedLLM

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVERY_FAULT = ("429", "500", "stall", "not_json", "bad_schema", "truncated", "half_json", "cut", "reset")


class Frame(BaseModel):
    prompt: str = Field(min_length=5)
    who: list[Literal["Mara", "Elias", "Ines"]] = Field(min_length=1, max_length=2)


class Shot(BaseModel):
    title: str = Field(pattern=r"^[A-Z]")
    frames: list[Frame] = Field(min_length=4, max_length=4)
    after_frame: int = Field(ge=1, le=4)


def fast(base_url, **kw):
    "A short deadline, stalls given up after 0.3 s, millisecond backoff."
    defaults = dict(model="local-test", base_url=base_url, timeout_s=20, stall_s=0.3, retry_base_s=0.005,
                    retry_max_s=0.05, max_retries=10)
    return LLMConfig(**{**defaults, **kw})


def ask_many(llm, n, prefix="Theme: a lighthouse, part"):
    async def main():
        return await asyncio.gather(*[llm.ask([{"role": "user", "content": f"{prefix} {i}"}], Shot, name=f"shot{i}")
                                      for i in range(n)])
    return run_sync(main())


def test_many_concurrent_calls_all_succeed_under_30_percent_faults():
    with FaultServer(faults=EVERY_FAULT, rate=0.3, seed=7, hang_s=2.0) as server:
        llm = LLM(fast(server.base_url, concurrency=16))
        shots = ask_many(llm, 120)
        counts = dict(server.counts)
    assert len(shots) == 120 and all(len(s.frames) == 4 for s in shots)
    assert llm.stats.failed == 0 and llm.stats.calls == 120
    assert (counts["requests"] - counts["ok"]) / counts["requests"] >= 0.2, counts
    assert {"429", "5xx", "timeout", "connection", "not_json", "truncated", "invalid"} <= set(llm.stats.faults)


def test_concurrency_is_bounded_and_used():
    with FaultServer(latency=0.1) as server:
        ask_many(LLM(fast(server.base_url, concurrency=4)), 16)
        assert server.max_in_flight == 4


def test_133_calls_at_concurrency_128_take_a_few_latencies():
    latency = 0.5
    with LocalLLMServer(latency=latency) as server:
        llm = LLM(fast(server.base_url, concurrency=128, stall_s=None))
        start = time.perf_counter()
        ask_many(llm, 133)
        wall = time.perf_counter() - start
    assert wall < 133 * latency / 10, f"133 calls took {wall:.2f}s at {latency}s latency (sequential: {133 * latency:.0f}s)"


def test_cache_replays_without_sending_and_never_holds_the_key(tmp_path):
    secret = "sk-test-" + "q" * 32
    with FaultServer(faults=EVERY_FAULT, rate=0.3, seed=3, hang_s=2.0) as server:
        first = LLM(fast(server.base_url), cache_dir=tmp_path / "llm", api_key=secret)
        answers = ask_many(first, 20)
        logged = json.dumps(server.requests)
    again = LLM(fast("http://127.0.0.1:9/v1"), cache_dir=tmp_path / "llm", api_key=secret)  # nothing listens there
    assert ask_many(again, 20) == answers
    assert again.stats.sent == 0 and again.stats.cache_hits == 20
    everything = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert secret not in everything + logged + repr(first) + str(first.stats)
    assert not list((tmp_path / "llm").glob(".*"))   # no temporary files left behind


def test_cache_key_is_the_first_request_the_server_received(tmp_path):
    with LocalLLMServer() as server:
        llm = LLM(fast(server.base_url), cache_dir=tmp_path)
        ask_many(llm, 3)
        keys = {request_key(body) for body in server.requests}
    assert keys == {p.stem for p in tmp_path.glob("*.json")}


RESUME_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pydantic import BaseModel
    from dreamframe.llm import LLM, LLMConfig
    class Answer(BaseModel):
        title: str
    async def main():
        llm = LLM(LLMConfig(model="m", base_url=sys.argv[1], concurrency=2, timeout_s=5), cache_dir=sys.argv[2])
        for coro in asyncio.as_completed([llm.ask([{"role": "user", "content": f"Theme: part {i}"}], Answer) for i in range(24)]):
            await coro
            print("done", flush=True)
    asyncio.run(main())
""")


def test_sigkill_then_restart_resends_nothing_answered(tmp_path):
    cache = tmp_path / "llm"
    with LocalLLMServer(latency=0.15) as server:
        process = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, server.base_url, str(cache)],
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(6): process.stdout.readline()          # a few answers are in
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        answered = {p.stem for p in cache.glob("*.json")}
        before = len(server.requests)
        subprocess.run([sys.executable, "-c", RESUME_SCRIPT, server.base_url, str(cache)], check=True,
                       capture_output=True, cwd=ROOT, timeout=60)
        resent = [request_key(body) for body in server.requests[before:]]
    assert 6 <= len(answered) < 24
    assert not answered & set(resent), "an answered request was sent again"
    assert len({p.stem for p in cache.glob("*.json")}) == 24


def test_fallback_to_json_object_is_remembered_across_event_loops():
    with FaultServer(reject_json_schema=True) as server:
        llm = LLM(fast(server.base_url))
        ask_many(llm, 2)
        ask_many(llm, 2, prefix="Theme: a storm, part")   # a second run_sync: a new event loop, same client state
        kinds = [r["response_format"]["type"] for r in server.requests]
    assert kinds.count("json_schema") <= 2 and kinds.count("json_object") == 4   # two calls may race to find out
    assert llm.stats.fallbacks == 1 and llm.response_mode == "json_object"


def test_a_server_without_response_format_gets_the_schema_in_the_prompt():
    with FaultServer(reject_response_format=True) as server:
        llm = LLM(fast(server.base_url))
        first = ask_many(llm, 3)
        kinds = [(r.get("response_format") or {}).get("type") for r in server.requests]
        again = ask_many(LLM(fast(server.base_url), cache_dir=None), 3)
    assert kinds.count(None) == 3 and kinds.count("json_schema") <= 3 and kinds.count("json_object") <= 3
    assert llm.stats.fallbacks == 2 and llm.response_mode == "prompt" and server.counts["rejected_response_format"] >= 2
    assert all(_SCHEMA_PROMPT in r["messages"][0]["content"] for r in server.requests if "response_format" not in r)
    assert first == again   # the same valid answers


def test_errors_name_the_call_in_one_line():
    with FaultServer(faults=("stall",), rate=1.0, hang_s=5.0) as server:
        llm = LLM(fast(server.base_url, timeout_s=1, stall_s=0.2))
        with pytest.raises(LLMTransportError, match=r"'shot0'.*timeout_s=1 s.*--llm-timeout-s") as error:
            ask_many(llm, 1)
        assert "\n" not in str(error.value) and error.value.kind == "timeout"
    with LocalLLMServer(answer=lambda request: json.dumps({"title": "lower", "frames": [], "after_frame": 9})) as server:
        llm = LLM(fast(server.base_url))
        with pytest.raises(LLMAnswerError, match=r"'shot0'.*after 2 repair") as error:
            ask_many(llm, 1)
        assert len(server.requests) == 3 and any("frames" in e for e in error.value.errors)
        assert "\n" not in str(error.value) and server.base_url in str(error.value)


def test_a_refused_request_is_not_retried():
    with LocalLLMServer() as server:
        llm = LLM(fast(server.base_url.replace("/v1", "/nowhere")))
        with pytest.raises(LLMTransportError, match="HTTP 404.*--llm-model and --base-url"):
            ask_many(llm, 1)
        assert llm.stats.sent == 1


def test_retry_after_headers():
    class Response:
        def __init__(self, headers): self.headers = headers
    assert _retry_after(Response({"retry-after-ms": "250"})) == 0.25
    assert _retry_after(Response({"retry-after": "3"})) == 3.0
    assert _retry_after(Response({})) is None
    assert _retry_after(Response({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None   # dates: our own backoff


def test_scripted_llm_is_deterministic_and_valid(tmp_path):
    first = ask_many(ScriptedLLM(seed=1), 30)
    assert first == ask_many(ScriptedLLM(seed=1), 30)
    assert first != ask_many(ScriptedLLM(seed=2), 30)
    cached = ScriptedLLM(seed=1, cache_dir=tmp_path)
    ask_many(cached, 3)
    again = ScriptedLLM(seed=1, cache_dir=tmp_path)
    ask_many(again, 3)
    assert again.stats.sent == 0
    run_sync(again.check())   # nothing to check offline


def test_config_errors_teach():
    with pytest.raises(ConfigError, match=r"temperature.*less than or equal to 2.*sampling temperature"):
        LLMConfig(temperature=3)
    with pytest.raises(ConfigError, match="max_retries"):
        LLMConfig(max_retries=-1)
    with pytest.raises(ConfigError, match="transport"):
        LLMConfig(transport="httpx")   # gone: the SDK's own HTTP stack is the only one
    with pytest.raises(ValueError, match="unknown faults"):
        FaultServer(faults=("teapot",))


class Topic(BaseModel):
    name: str
    subtopics: list["Topic"] = []


def test_recursive_models_are_refused_up_front():
    with pytest.raises(ValueError, match="Topic contains itself"):
        strict_schema(Topic)


def test_a_gate_bounds_requests_across_clients():
    class Gate:
        def __init__(self): self.slots, self.inside, self.most = asyncio.Semaphore(3), 0, 0
        async def __aenter__(self):
            await self.slots.acquire()
            self.inside += 1
            self.most = max(self.most, self.inside)
        async def __aexit__(self, *exc):
            self.inside -= 1
            self.slots.release()
    gate = Gate()
    with FaultServer(latency=0.05) as server:
        clients = [LLM(fast(server.base_url, concurrency=16, stall_s=None), gate=gate) for _ in range(3)]
        async def main():
            return await asyncio.gather(*[c.ask([{"role": "user", "content": f"Theme: part {i}"}], Shot) for c in clients for i in range(10)])
        assert len(run_sync(main())) == 30
        assert gate.most == 3 and server.max_in_flight == 3
