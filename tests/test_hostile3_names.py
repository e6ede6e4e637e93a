"""Issue 22, hostile input round 3, points 4 (names in any script), 5 (secrets) and 9 (file modes).

Attacks tried, and what happens now (each failed before the fix):

Names (character ids name files: RUN/characters/<id>.png, the records of characters.json, the identity scores)
- 李娜 and 王伟 in one cast: ids `李娜`, `王伟` (both were `movie`, and the characters stage refused the story);
  the CLI runs every stage on that cast: sheets, identity frames, viewer and metrics use those ids.
- ليلى, Ömer, Zoë, हिन्दी: ids `ليلى`, `ömer`, `zoë`, `हिन्दी` (were `movie`, `mer`, `zo`, `movie`).
- 🦊 and "Mara 🦊": ids `fox-face`, `mara-fox-face` (were `movie`, `mara`); the name in a prompt now gets its look
  (`\\b🦊\\b` never matched, so SDXL was asked to draw "🦊").
- Mara and MARA: `mara-<hash>` each (was a refusal); the hash is of the name, so no id depends on the cast order.
- "Zoë" typed with a combining accent, or "Ｍａｒａ" in full width, beside "Zoë"/"Mara": the same name, refused as
  a duplicate in movie.json; a frame that writes the name decomposed still finds its character (text is NFC).
- `../../etc/passwd`, `a/b\\c:d*e?f"g<h>i|j`, NUL and other control characters, a right-to-left override, `..`,
  80 four-byte letters: ids of letters, digits and `-` only, under 200 bytes; `sheet_path` refuses any non-id.
- Every ASCII name (a list and 20,000 random printable strings): the same id as before, so old runs keep their sheets.

Secrets
- `--llm-base-url http://user:password@host/v1` and `…/v1?api_key=…`: refused in one line that shows the URL masked
  and says where credentials go; nothing is written (config.json kept the password before, and errors showed it).
- The advised `OPENAI_BASE_URL=http://user:password@host/v1`: the story runs, the server gets the password as Basic
  auth, and no file under RUN, no output of `story` or `status` holds it.
- The same URL pointing at a closed port, with --debug: the error names the server masked (it showed the password).
- A password longer than the 60 characters an echoed value is cut to: masked before it is cut.

File modes
- A finished demo run under umask 022 and under umask 002 (then rerun with --redo): every file and folder has the
  mode the umask gives (files were -rw------- from tempfile.mkstemp and safetensors, except movie.mp4).
"""
import base64
import hashlib
import json
import os
import random
import re
import stat
import string
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from dreamframe.characters import sheet_path
from dreamframe.schema import frame_characters
from dreamframe.llm import LLMConfig
from dreamframe.schema import Character, Frame, Movie, Shot, Substory, character_ids, slugify
from dreamframe.testing import LocalLLMServer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
DREAMFRAME = [sys.executable, "-m", "dreamframe.cli"]
DEMO = ["--substories", "1", "--shots", "2", "--frames", "2", "--quiet"]
LOOK = "a woman who looks like Emma Stone in red clothes"
PASSWORD = "hunter2-Secret"


def dreamframe(*args, env=None, umask=-1, timeout=600):
    "Run the `dreamframe` command in a fresh process (with `umask`, when given)."
    return subprocess.run([*DREAMFRAME, *map(str, args)], capture_output=True, text=True, env=env or ENV,
                          umask=umask, timeout=timeout)


def cast(*names) -> Movie:
    return Movie(characters=[Character(name=name, look=LOOK) for name in names])


def old_slug(text: str) -> str:
    "The ASCII slug dreamframe made before issue 22, for comparison."
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-") or "movie"


# ---------------------------------------------------------------- 4. names in any script

def test_names_in_any_script_get_unique_readable_ids():
    names = ["李娜", "王伟", "ليلى", "Ömer", "Zoë", "हिन्दी", "🦊", "Mara 🦊", "Mara", "MARA", "Tom O'Neil"]
    ids = character_ids(cast(*names))
    assert len(set(ids.values())) == len(names)
    assert [ids[n] for n in names[:8]] == ["李娜", "王伟", "ليلى", "ömer", "zoë", "हिन्दी", "fox-face", "mara-fox-face"]
    assert ids["Tom O'Neil"] == "tom-o-neil"
    assert {ids["Mara"], ids["MARA"]} == {"mara-" + _sha("Mara"), "mara-" + _sha("MARA")}
    assert character_ids(cast(*reversed(names))) == ids                 # no id depends on the order of the cast
    assert character_ids(cast("MARA", "李娜"))["MARA"] == "mara"          # a hash only where two names collide


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:6]


def test_a_name_typed_two_ways_is_one_name():
    decomposed = unicodedata.normalize("NFD", "Zoë")
    assert decomposed != "Zoë" and slugify(decomposed) == slugify("Zoë") == "zoë"
    assert slugify("Ｍａｒａ") == "mara"
    for twin in (decomposed, "Zoë"):
        with pytest.raises(ValueError, match="rename one"):
            cast("Zoë", twin)
    with pytest.raises(ValueError, match="typed another way"):
        cast("Mara", "Ｍａｒａ")
    frame = Frame(prompt=f"In the kitchen, {decomposed} is sitting", characters=[decomposed])
    movie = Movie(characters=[Character(name="Zoë", look=LOOK)], substories=[Substory(shots=[Shot(frames=[frame])])])
    assert movie.frames[0].characters == ["Zoë"] and LOOK in movie.render_prompt(movie.frames[0])
    assert frame_characters(movie, movie.frames[0]) == ["zoë"]


def test_ascii_ids_are_unchanged():
    names = ["Mara", "Tom", "Tom O'Neil", "Dr. Who", "  spaced  out ", "R2-D2", "x" * 60, "under_score", "A&B", "Con"]
    rng = random.Random(22)
    names += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 70))) for _ in range(20_000)]
    changed = [(n, old_slug(n), slugify(n)) for n in names if old_slug(n) != "movie" and old_slug(n) != slugify(n)]
    assert not changed, changed[:5]


HOSTILE = ["../../etc/passwd", 'a/b\\c:d*e?f"g<h>i|j', "nul\x00byte\x07bell", "\u202eevil.png", "..", "ﬁ⁄²",
           "𝔐𝔞𝔯𝔞" * 20, "𠀀" * 80, "  Mara  ", "--", "🦊🦊🦊", "\u200b"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_ids_are_safe_file_names(name, tmp_path):
    character_id = slugify(name)
    for char in character_id:
        assert char == "-" or unicodedata.category(char)[0] in "LMN", (name, character_id, char)
    assert character_id and not character_id.startswith("-") and not character_id.endswith("-")
    assert len(character_id.encode("utf-8")) <= 200 and slugify(character_id) == character_id
    path = sheet_path(tmp_path, character_id)
    assert path.parent == tmp_path / "characters" and path.name == f"{character_id}.png"
    path.parent.mkdir()
    path.write_bytes(b"png")   # this file system takes it
    with pytest.raises(ValueError, match="not a character id"):
        sheet_path(tmp_path, name if slugify(name) != name else "../" + name)


def test_an_emoji_name_is_drawn_with_its_look():
    movie = cast("🦊", "Mara 🦊")
    drawn = movie.render_prompt("In the forest, 🦊 is talking to Mara 🦊")
    assert drawn == f"In the forest, {LOOK} is talking to {LOOK}"


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    "A demo run made under umask 002, its cast renamed 李娜 and 王伟 in movie.json, then run again with --redo."
    run_dir = tmp_path_factory.mktemp("names") / "run"
    made = dreamframe("demo", run_dir, *DEMO, umask=0o002)
    assert made.returncode == 0, made.stderr[-2000:]
    movie = json.loads((run_dir / "movie.json").read_text())
    old = [c["name"] for c in movie["characters"]]
    assert len(old) >= 2, f"the demo story has {old}: two characters are needed"
    text = (run_dir / "movie.json").read_text()
    for before, after in zip(old, ["李娜", "王伟"]):
        text = re.sub(rf"\b{before}\b", after, text)
    (run_dir / "movie.json").write_text(text)
    again = dreamframe("run", run_dir, "--redo", umask=0o002)
    assert again.returncode == 0, again.stderr[-2000:]
    return run_dir


def test_a_chinese_cast_runs_through_every_stage(shared_run):
    sheets = sorted(p.name for p in (shared_run / "characters").glob("*.png"))
    assert {"李娜.png", "王伟.png"} <= set(sheets), sheets
    records = json.loads((shared_run / "characters" / "characters.json").read_text())["characters"]
    assert records["李娜"]["name"] == "李娜" and records["王伟"]["path"] == "characters/王伟.png"
    lines = [json.loads(line) for line in (shared_run / "frames" / "manifest.jsonl").read_text().splitlines()]
    conditioned = {i for line in lines for i in line["identity_characters"]}
    assert conditioned == {"李娜", "王伟"}, conditioned
    metrics = json.loads((shared_run / "eval" / "metrics.json").read_text())
    assert set(metrics["identity"]["characters"]) == {"李娜", "王伟"}
    page = (shared_run / "view.html").read_text()
    assert '"id": "李娜"' in page and '"id": "王伟"' in page


# ---------------------------------------------------------------- 5. secrets

class AuthServer(LocalLLMServer):
    "The local test server, keeping the Authorization header of every request."
    def respond(self, handler, request):
        with self.lock:
            self.authorizations = getattr(self, "authorizations", []) + [handler.headers.get("Authorization")]
        return super().respond(handler, request)


STORY = ["--theme", "a fox learns to sail", "--llm-model", "local-test", "--substories", "1", "--shots", "1",
         "--frames", "2", "--lines", "1"]


def files_holding(run_dir: Path, secret: str) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_base_url_with_credentials_is_refused_and_never_written(tmp_path):
    with AuthServer() as server:
        for url in (server.base_url.replace("//", f"//ann:{PASSWORD}@"), f"{server.base_url}?api_key={PASSWORD}"):
            run_dir = tmp_path / "run"
            done = dreamframe("story", run_dir, *STORY, "--llm-base-url", url)
            assert done.returncode == 1 and PASSWORD not in done.stdout + done.stderr
            error = done.stderr.strip()
            assert "\n" not in error and "OPENAI_BASE_URL" in error and "OPENAI_API_KEY" in error, error
            assert "***" in error and not (run_dir / "config.json").exists() and not files_holding(run_dir, PASSWORD)
        assert server.requests == []


def test_credentials_from_the_environment_are_used_and_never_shown(tmp_path):
    run_dir = tmp_path / "run"
    with AuthServer() as server:   # the command the refusal advises
        env = {**ENV, "OPENAI_BASE_URL": server.base_url.replace("//", f"//ann:{PASSWORD}@")}
        done = dreamframe("story", run_dir, *STORY, env=env)
        status = dreamframe("status", run_dir, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    basic = "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()
    assert server.authorizations and set(server.authorizations) == {basic}   # the password was sent, as Basic auth
    saved = json.loads((run_dir / "config.json").read_text())
    assert (run_dir / "movie.json").exists() and saved["llm"]["base_url"] is None
    assert PASSWORD not in done.stdout + done.stderr + status.stdout + status.stderr
    assert not files_holding(run_dir, PASSWORD)
    env = {**ENV, "OPENAI_BASE_URL": f"http://ann:{PASSWORD}@127.0.0.1:9/v1"}   # nothing listens there
    failed = dreamframe("story", tmp_path / "closed", *STORY, "--debug", env=env)
    assert failed.returncode != 0 and "http://***@127.0.0.1:9/v1" in failed.stderr, failed.stderr[-2000:]
    assert PASSWORD not in failed.stdout + failed.stderr and not files_holding(tmp_path / "closed", PASSWORD)


def test_an_echoed_value_is_masked_before_it_is_cut():
    url = f"http://ann:{PASSWORD * 8}@127.0.0.1:8000/v1"
    with pytest.raises(ValueError) as refused:
        LLMConfig(base_url=url)
    assert PASSWORD[:4] not in str(refused.value) and "http://***@127.0.0.1:8000/v1" in str(refused.value)


# ---------------------------------------------------------------- 9. file modes

def assert_modes(run_dir: Path, umask: int):
    wrong = {}
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = (0o777 if path.is_dir() or mode & 0o100 else 0o666) & ~umask
        if mode != wanted: wrong[str(path.relative_to(run_dir))] = oct(mode)
    assert not wrong, f"modes that umask {umask:03o} does not give: {dict(list(wrong.items())[:10])}"


def test_a_team_can_read_a_run_made_under_umask_002(shared_run):
    assert_modes(shared_run, 0o002)


def test_a_run_made_under_umask_022_is_readable_by_all(tmp_path):
    made = dreamframe("demo", tmp_path / "run", *DEMO, umask=0o022)
    assert made.returncode == 0, made.stderr[-2000:]
    for made_by_a_library in ("export/movie.mp4", "style/embedding.safetensors", "_tiny_model/unet"):
        assert (tmp_path / "run" / made_by_a_library).exists()
    assert_modes(tmp_path / "run", 0o022)
