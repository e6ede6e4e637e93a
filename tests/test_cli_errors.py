"""Every CLI failure is one line on stderr with an exit status >= 1 and no traceback (issue: bad input, item 7)."""
import errno
import json
import os
import signal
import subprocess
import time

from dreamframe.cli import main

from cli_support import DREAMFRAME, ENV, SMALL, demo_run, one_line_failure, run_copy  # noqa: F401 (fixtures)


def test_ctrl_c_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([*DREAMFRAME, "demo", str(run_dir), *SMALL], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (run_dir / "movie.json").exists(): break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)   # the story is written; style training starts next
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["dreamframe demo: interrupted; run the same command again to resume"]


def test_disk_full_names_the_folder_and_the_bytes(tmp_path, monkeypatch, capsys):
    reference = {"character": {}, "img_diag": [["frame", "In a room, a man is sitting"]], "QA": [], "overview": ""}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    real_fdopen = os.fdopen
    class Full:
        def __init__(self, fd, mode): self.file = real_fdopen(fd, mode)
        def __enter__(self): return self
        def __exit__(self, *exc): self.file.close()
        def write(self, data): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fdopen", Full)
    code = main(["import-reference", str(tmp_path / "ref.json"), str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "disk full" in err[0] and str(tmp_path / "run") in err[0] and "bytes" in err[0]


def test_uncached_hub_id_offline_says_how_to_provide_the_model(tmp_path, cli):
    done = cli("run", tmp_path / "run", "--theme", "a dog learns to sail", "--llm-model", "scripted",
                      "--model", "stabilityai/stable-diffusion-xl-base-1.0")
    one_line_failure(done, "stabilityai/stable-diffusion-xl-base-1.0", "local folder")


def test_import_reference_of_a_png(tmp_path, cli):
    (tmp_path / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd")
    one_line_failure(cli("import-reference", tmp_path / "frame.png", tmp_path / "run"), "frame.png", "not a UTF-8 text file")


def test_truncated_config_json(run_copy, cli):
    path = run_copy / "config.json"
    path.write_text(path.read_text()[:40])
    one_line_failure(cli("run", run_copy, "--quiet"), "config.json", "not valid JSON")


def test_truncated_qa_json(run_copy, cli):
    path = run_copy / "qa.json"
    path.write_text(path.read_text()[:100])
    (run_copy / "export" / "llava.json").unlink()
    one_line_failure(cli("export", run_copy, "--quiet"), "qa.json")


def test_deeply_nested_movie_json(run_copy, cli):
    (run_copy / "movie.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_failure(cli("keyframes", run_copy, "--quiet"), "movie.json", "nested too deeply")


def test_wrong_shaped_manifest_line(run_copy, cli):
    manifest = run_copy / "frames" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[3] = json.dumps({"frame_id": "s01.t01.f04", "path": "/etc/passwd"})
    manifest.write_text("\n".join(lines) + "\n")
    one_line_failure(cli("keyframes", run_copy, "--quiet"), "manifest.jsonl, line 4")


def test_qa_against_a_broken_llm(run_copy, cli):
    (run_copy / "qa.json").unlink()
    done = cli("qa", run_copy, "--llm-model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1", "--quiet")
    one_line_failure(done, "http://127.0.0.1:9/v1")


def test_unknown_flag_is_one_line(cli):
    done = cli("keyframes", "nowhere", "--stepz", "3")
    one_line_failure(done)
