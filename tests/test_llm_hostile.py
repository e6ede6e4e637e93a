"""Issue 14, items 1-4: a hostile or broken server costs a bounded time and memory, says so in one line, and leaves
nothing bad behind in the cache. Each test here failed on the client before the fix (LeanTransport, per-attempt
timeouts, answers cached before they were checked)."""
import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from dreamframe.llm import LLM, LLMConfig, LLMTransportError, request_key, run_sync
from dreamframe.testing import LocalLLMServer, schema_instance

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer, self_signed_cert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Scene(BaseModel):
    title: str = Field(pattern=r"^[A-Z]")
    beats: list[str] = Field(min_length=2, max_length=2)


def ask(llm, text="Theme: a storm at sea", name="scene"):
    return run_sync(llm.ask([{"role": "user", "content": text}], Scene, name=name))


def test_invalid_answers_are_never_cached_and_a_rerun_sends_only_the_failed_calls(tmp_path):
    broken = {"on": True}
    def answer(request):   # parts 1 and 4 get schema-breaking answers while the server is broken
        first_user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        if broken["on"] and first_user.endswith(("part 1", "part 4")): return json.dumps({"title": "no beats"})
        return json.dumps(schema_instance(request["response_format"]["json_schema"]["schema"], seed=first_user))
    topics = [f"Theme: a lighthouse, part {i}" for i in range(6)]
    async def run(llm):
        return await asyncio.gather(*[llm.ask([{"role": "user", "content": t}], Scene, name=f"part{i}")
                                      for i, t in enumerate(topics)], return_exceptions=True)
    config = LLMConfig(model="local-test", base_url="http://127.0.0.1:9/v1", repair_attempts=1)
    with LocalLLMServer(answer=answer) as server:
        config.base_url = server.base_url
        first = run_sync(run(LLM(config, cache_dir=tmp_path / "llm")))
        failed = [i for i, result in enumerate(first) if isinstance(result, Exception)]
        assert failed == [1, 4]
        assert len(list((tmp_path / "llm").glob("*.json"))) == 4          # only the good answers were cached
        broken["on"], before = False, len(server.requests)               # the server is fixed
        again = LLM(config, cache_dir=tmp_path / "llm")
        second = run_sync(run(again))
        resent = server.requests[before:]
    assert not any(isinstance(result, Exception) for result in second)
    assert sorted(r["messages"][-1]["content"] for r in resent) == [topics[1], topics[4]]   # the failed calls, once each
    assert (again.stats.cache_hits, again.stats.sent, again.stats.repairs) == (4, 2, 0)


def test_a_repaired_answer_is_cached_under_the_first_request(tmp_path):
    def answer(request):   # the first answer breaks the schema; the repair round fixes it
        repaired = len(request["messages"]) > 1
        return json.dumps({"title": "Storm", "beats": ["a", "b"]} if repaired else {"title": "storm", "beats": []})
    with LocalLLMServer(answer=answer) as server:
        llm = LLM(LLMConfig(model="local-test", base_url=server.base_url), cache_dir=tmp_path / "llm")
        assert ask(llm).title == "Storm" and llm.stats.repairs == 1
        assert [p.stem for p in (tmp_path / "llm").glob("*.json")] == [request_key(server.requests[0])]
        rerun = LLM(LLMConfig(model="local-test", base_url=server.base_url), cache_dir=tmp_path / "llm")
        assert ask(rerun).title == "Storm" and rerun.stats.sent == 0


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, time
    from pydantic import BaseModel
    from dreamframe.llm import LLM, LLMConfig, LLMTransportError, run_sync
    class Answer(BaseModel):
        title: str
    def kb(field): return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
    llm = LLM(LLMConfig(model="m", base_url=sys.argv[1], timeout_s=60, retry_base_s=0.01))
    run_sync(llm.ask([{"role": "user", "content": "warm up"}], Answer))   # first use: lazy imports, connections
    open("/proc/self/clear_refs", "w").write("5")                         # restart the peak-RSS count
    before, start = kb("VmRSS:"), time.perf_counter()
    try: run_sync(llm.ask([{"role": "user", "content": "huge"}], Answer)); print("no error")
    except LLMTransportError as error: print(error)
    print(f"{time.perf_counter() - start:.3f} {(kb('VmHWM:') - before) / 1024:.1f}")
""")


@pytest.mark.parametrize("fault", ["huge", "huge_declared"])
def test_a_1_gib_answer_fails_fast_in_little_memory(fault):
    "1 GiB streamed by the server (chunked, or with its Content-Length): the call fails in < 10 s, RSS grows < 200 MB."
    plan = lambda request, attempt: fault if request["messages"][-1]["content"] == "huge" else None
    with FaultServer(plan=plan, huge_bytes=2**30) as server:
        result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, server.base_url], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    message, numbers = result.stdout.strip().splitlines()
    seconds, growth_mb = map(float, numbers.split())
    assert "max_answer_bytes=8,000,000" in message and "--llm-max-answer-bytes" in message, message
    assert seconds < 10 and growth_mb < 200, (seconds, growth_mb)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_trickling_answer_is_cut_at_the_deadline(scheme, tmp_path, monkeypatch):
    "One byte a second: `timeout_s=5` ends the call in <= 6 s, on plain http and on https (self-signed certificate)."
    tls = None
    if scheme == "https":
        tls = self_signed_cert(tmp_path)
        if tls is None: pytest.skip("the openssl command is not installed")
        monkeypatch.setenv("SSL_CERT_FILE", tls[0])   # how a private CA is trusted: httpx's own rule
    with FaultServer(faults=("trickle",), rate=1.0, trickle_s=1.0, tls=tls) as server:
        assert server.base_url.startswith(scheme + "://")
        llm = LLM(LLMConfig(model="local-test", base_url=server.base_url, timeout_s=5))
        start = time.perf_counter()
        with pytest.raises(LLMTransportError, match=r"within timeout_s=5 s.*--llm-timeout-s") as error:
            ask(llm)
        elapsed = time.perf_counter() - start
        assert server.counts["trickle"] >= 1
    assert elapsed <= 6, f"{elapsed:.1f} s"
    assert error.value.kind == "timeout" and "\n" not in str(error.value)


def test_https_with_a_trusted_self_signed_certificate_works(tmp_path, monkeypatch):
    tls = self_signed_cert(tmp_path)
    if tls is None: pytest.skip("the openssl command is not installed")
    with FaultServer(tls=tls) as server:
        untrusted = LLM(LLMConfig(model="local-test", base_url=server.base_url, timeout_s=5, retry_base_s=0.01))
        with pytest.raises(LLMTransportError, match="CERTIFICATE_VERIFY_FAILED.*SSL_CERT_FILE"):
            ask(untrusted)
        assert untrusted.stats.sent == 1   # no retry can fix it
        monkeypatch.setenv("SSL_CERT_FILE", tls[0])
        assert ask(LLM(LLMConfig(model="local-test", base_url=server.base_url, timeout_s=5))).title


def test_a_refused_connection_fails_fast_and_says_where(tmp_path):
    run_dir = tmp_path / "run"
    llm = LLM(LLMConfig(model="local-test", base_url="http://127.0.0.1:9/v1"), cache_dir=run_dir / "llm")  # default retries
    start = time.perf_counter()
    with pytest.raises(LLMTransportError) as error:
        ask(llm, name="level 1")
    elapsed, message = time.perf_counter() - start, str(error.value)
    assert elapsed < 3 and llm.stats.sent <= 2, (elapsed, llm.stats)
    assert error.value.kind == "refused" and "\n" not in message
    for part in ("http://127.0.0.1:9/v1", "'local-test'", "--base-url", str(run_dir)): assert part in message, message
    with pytest.raises(LLMTransportError, match="http://127.0.0.1:9/v1.*--base-url"):
        run_sync(llm.check())   # the preflight says the same, before a run spends anything


@pytest.mark.parametrize("fault", ["half_json", "cut", "reset"])
def test_a_cut_answer_is_retried(fault):
    "A 200 whose JSON body is cut short (or a connection cut mid-body, or reset) is retried like any other fault."
    with FaultServer(plan=lambda request, attempt: fault if attempt == 0 else None) as server:
        llm = LLM(LLMConfig(model="local-test", base_url=server.base_url, retry_base_s=0.01))
        assert ask(llm).title
        assert (server.counts[fault], server.counts["ok"], llm.stats.retries) == (1, 1, 1)


def test_an_api_key_with_whitespace_is_refused_up_front(monkeypatch):
    key = "sk-test-" + "k" * 24
    for bad in (key + "\n", " " + key, key[:10] + " " + key[10:]):
        with pytest.raises(ValueError, match="newline") as error:
            LLM(LLMConfig(), api_key=bad)
        assert key not in str(error.value) and "OPENAI_API_KEY" in str(error.value)
    monkeypatch.setenv("OPENAI_API_KEY", key + "\r\n")
    with pytest.raises(ValueError, match="OPENAI_API_KEY holds spaces, a newline"):
        LLM(LLMConfig())
    monkeypatch.setenv("OPENAI_API_KEY", key)
    LLM(LLMConfig())   # the clean key is taken


def test_the_preflight_sends_one_tiny_request():
    with LocalLLMServer() as server:
        run_sync(LLM(LLMConfig(model="local-test", base_url=server.base_url)).check())
        assert [r["max_tokens"] for r in server.requests] == [1]
