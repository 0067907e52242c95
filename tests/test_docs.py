"""The commands and files of README.md and docs/*.md work as the pages say (issue 11, item 13).

Each page is read for its fenced blocks and run top to bottom in a directory of its own, as a
reader following it would: the `sh`/`bash` blocks as scripts (any failing line fails), the
`console` blocks command by command (`$ ` lines, `\\` continuations) with the exit status they
document, the `toml` blocks through `ipsp config check`, and the `python` blocks of
docs/embedding.md in one namespace. Environment variables exported and the working
directory carry from one block to the next, as in the reader's shell. A `toml` block whose
first line is `# NAME.toml` is also saved as NAME for the commands after it.

What a block cannot do here is said in the markdown, by an HTML comment on the line before it:

    <!-- doc-test: skip (why) -->             not run (installs, root, namespaces, long runs)
    <!-- doc-test: background (..."TEXT"...) -->  started and left running until the page is
                                               done (a daemon), then stopped with SIGTERM, which
                                               must end it with status 0; the next block waits
                                               for TEXT on its standard error
    <!-- doc-test: needs PROGRAM -->          run only where PROGRAM is installed
    <!-- doc-test: invalid (why) -->          a toml file the loader must refuse (exit 1, one line)
    <!-- doc-test: fragment (why) -->         toml that is part of a file: only its syntax is checked

Pages the docs helper does not own get the same markers from EXPLICIT below, each with its
reason. So that the examples touch nothing outside the test, the absolute paths they use
(/etc/ipsp, /run/ipsp) are mapped into the page's directory, in commands and in the toml files
they write; outputs are mapped back before they are compared. Every `ipsp trace gen` and
`ipsp bench` runs with --packets PACKETS (the docs allow --packets on both).

Documented outputs are compared where they are deterministic: a one-line `ipsp: ...` or
`FILE:KEY: ...` error must come out as one line on standard error, with that text (paths
compared by file name), and the command must fail (with the status a following `echo $?`
shows, else 1); a documented success line like `added policy 6` must be the first line of
the output; documented JSON must be JSON of that shape. Tables whose rows depend on the
moment (ages, counters, events) are checked for their first line, the header, only.
"""

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import fastpath
import ipsp

ROOT = Path(__file__).resolve().parents[1]
PAGES = [p for p in ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
         if (ROOT / p).is_file()]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
PACKETS = 1000
COMMAND_TIMEOUT = 60

# Markers for blocks of pages whose text this test's author does not own: (page, the block's
# first line) -> (kind, reason). Same meaning as the markdown comments.
EXPLICIT = {
    ("docs/configuration.md", "lifetime = { soft_bytes = 900_000_000, hard_bytes = 1_000_000_000, "
                              "soft_seconds = 3000, hard_seconds = 3600 }"):
        ("fragment", "one key of an [[sa]] table"),
}
# Pages whose files name secrets that another page's setup block creates: page -> (page, the
# index of the setup among its shell blocks)
SETUP_FROM = {
    "docs/configuration.md": ("docs/cli.md", 0),    # /etc/ipsp/gw2.psk, IPSP_GW2_OUT
    "docs/ike.md": ("docs/cli.md", 0),              # /etc/ipsp/gw2.psk
}
# The README's trace commands work on the reader's own capture and SA file: make both.
README_SA = """\
[[sa]]
spi = 0x12345678
src = "192.0.2.1"
dst = "192.0.2.2"
proposal = "aes128-sha256"
enc_key = "0x000102030405060708090a0b0c0d0e0f"
auth_key = "0x101112131415161718191a1b1c1d1e1f101112131415161718191a1b1c1d1e1f"
"""
# the same SA as Wireshark's esp_sa table writes it (Preferences, Protocols, ESP), for --secrets
README_ESP_SA = ('"IPv4","192.0.2.1","192.0.2.2","0x12345678","AES-CBC [RFC3602]","0x000102030405060708090a0b0c0d0e0f",'
                 '"HMAC-SHA-256-128 [RFC4868]","0x101112131415161718191a1b1c1d1e1f101112131415161718191a1b1c1d1e1f"\n')
EXTRA_SETUP = {
    "README.md": f"ipsp trace gen imix plain.pcap --packets {PACKETS}\ncat > sa.toml <<'EOF'\n{README_SA}EOF\n"
                 f"cat > esp_sa <<'EOF'\n{README_ESP_SA}EOF\nchmod 600 sa.toml esp_sa\n",
}

MARKER = re.compile(r"<!--\s*doc-test:\s*([\w-]+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
MAPPED = ("/etc/ipsp", "/run/ipsp")


@dataclass
class Block:
    page: str
    line: int                   # of the opening fence, 1-based
    lang: str
    text: str
    kind: str | None = None     # a marker's kind
    arg: str = ""               # its reason or argument

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it (if any)."""
    lines = (ROOT / page).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(page, start + 1, m.group(1), "\n".join(body) + "\n")
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.search(prev)
        if mark:
            block.kind, block.arg = mark.group(1), mark.group(2).strip("() ")
        elif (page, body[0] if body else "") in EXPLICIT:
            block.kind, block.arg = EXPLICIT[(page, body[0])]
        out.append(block)
    return out


def small(text: str) -> str:
    """Every trace generated and every bench run with PACKETS packets, so the pages run in
    seconds."""
    text = re.sub(r"--packets[ =][\d_,]+", f"--packets {PACKETS}", text)
    return re.sub(r"^(\s*ipsp (?:trace gen|bench)\b(?:(?!--packets)[^\n#])*?)(\s*(?:#.*)?)$",
                  rf"\1 --packets {PACKETS}\2", text, flags=re.M)


# -- where the commands run --------------------------------------------------------------------

def _environment(bin_dir: Path) -> dict[str, str]:
    """python, ipsp and cythonize on PATH, all of them this interpreter with the ipsp and
    fastpath this test imported (the installed package in CI, src/ in a source tree)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    paths = [os.path.dirname(os.path.dirname(m.__file__)) for m in (ipsp, fastpath)]
    installed = None                    # the console script, when it runs the ipsp imported here
    try:
        dist = importlib.metadata.distribution("ipsp")
        if Path(dist.locate_file("ipsp")).resolve() == Path(ipsp.__file__).parent.resolve():
            script = Path(sysconfig.get_path("scripts")) / "ipsp"
            installed = str(script) if script.is_file() else shutil.which("ipsp")
    except importlib.metadata.PackageNotFoundError:
        pass
    python = shlex.quote(sys.executable)
    scripts = {"python": f'exec {python} "$@"', "python3": f'exec {python} "$@"',
               "ipsp": f'exec {shlex.quote(installed)} "$@"' if installed else f'exec {python} -m ipsp "$@"',
               "cythonize": f'exec {python} -m Cython.Build.Cythonize "$@"'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPSP_", "PYTEST_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONWARNINGS="ignore",
               HOME=str(bin_dir.parent))
    return env


class Shell:
    """A reader's shell: one directory, exports and `cd` kept from one block to the next."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir(parents=True)
        (self.cwd / "tests").symlink_to(ROOT / "tests")      # read by the examples, never written
        if (ROOT / "examples").is_dir():                       # built in place by the examples: a copy
            shutil.copytree(ROOT / "examples", self.cwd / "examples")
        self.env = _environment(root / "bin")
        self.state = root / "state.sh"
        self.state.write_text("")
        (root / "cwd").write_text(str(self.cwd))
        self.background: list[tuple[Block, subprocess.Popen, Path]] = []

    def map(self, text: str) -> str:
        for p in MAPPED:
            text = re.sub(rf"(?<![\w.-]){re.escape(p)}(?=/|\b)", str(self.root) + p, text)
        return text

    def unmap(self, text: str) -> str:
        for p in MAPPED:
            text = text.replace(str(self.root) + p, p)
        return text.replace(str(self.cwd) + "/", "")

    def _script(self, text: str, strict: bool) -> str:
        state, cwd = shlex.quote(str(self.state)), shlex.quote(str(self.root / "cwd"))
        return (f". {state}\n"
                f'cd "$(cat {cwd})" || exit 97\n'
                f"trap 'export -p > {state}; pwd > {cwd}' EXIT\n"
                + ("set -eo pipefail\n" if strict else "") + self.map(small(text)) + "\n")

    def run(self, text: str, *, strict: bool) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", self._script(text, strict)], env=self.env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        self._map_files()
        return proc

    def start(self, block: Block, text: str) -> None:
        log = self.root / f"background-{len(self.background)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(["bash", "-c", self._script(f"exec {text.strip()}", False)], env=self.env,
                                    stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.background.append((block, proc, log))
        ready = re.search(r'"([^"]+)"', block.arg)
        deadline = time.monotonic() + 20
        while ready and ready.group(1) not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"{block.where}: {text.strip()!r} did not get ready ({ready.group(1)!r}):\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> list[str]:
        """SIGTERM every daemon a page started; each must exit 0 (cli.md: SIGTERM exits 0)."""
        problems = []
        for block, proc, log in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc.returncode != 0:
                problems.append(f"{block.where}: exited {proc.returncode} on SIGTERM:\n{log.read_text()[-2000:]}")
        self.background.clear()
        return problems

    def _map_files(self) -> None:
        # a configuration copied into /etc/ipsp names /etc/ipsp and /run/ipsp paths itself
        for f in self.root.rglob("*.toml"):
            if f.is_file() and not f.is_symlink() and "tests" not in f.relative_to(self.root).parts:
                text = f.read_text()
                if self.map(text) != text:
                    f.write_text(self.map(text))


# -- console blocks ----------------------------------------------------------------------------

@dataclass
class Command:
    text: str
    output: list[str]


def commands(block: Block) -> list[Command]:
    cmds: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            text = lines[i][2:]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            cmds.append(Command(text, []))
        elif cmds:
            cmds[-1].output.append(lines[i])
        i += 1
    return cmds


ERROR = re.compile(r"^(ipsp: |[^\s:]+:[^\s:]*[\[\].\w]+: )")


def _paths_to_names(text: str) -> str:
    return re.sub(r"(?<![\w.])/?(?:[\w.-]+/)+(?=[\w.-])", "", text)


def check_command(shell: Shell, block: Block, cmd: Command, expected_status: int | None) -> list[str]:
    where = f"{block.where}: $ {cmd.text}"
    if cmd.text.strip() == "echo $?":            # the status it shows is checked on the command before
        return []
    proc = shell.run(cmd.text, strict=False)
    out, err = shell.unmap(proc.stdout), shell.unmap(proc.stderr)
    documented = [line for line in cmd.output if line.strip()]
    is_error = len(documented) == 1 and ERROR.match(documented[0])
    if expected_status is None:
        expected_status = 1 if is_error else 0
    if proc.returncode != expected_status:
        return [f"{where}\n  exit status {proc.returncode}, documented {expected_status}\n"
                f"  stdout: {out[-1500:]}\n  stderr: {err[-1500:]}"]
    if is_error:
        lines = err.splitlines()
        if len(lines) != 1 or out.strip():
            return [f"{where}\n  an error must be one line on standard error, got stdout {out!r} stderr {err!r}"]
        if _paths_to_names(lines[0]) != _paths_to_names(documented[0]):
            return [f"{where}\n  documented: {documented[0]}\n  got:        {lines[0]}"]
    elif documented and documented[0] in ("[", "{"):     # JSON whose items depend on the moment
        try:
            value = json.loads(out)
        except ValueError:
            return [f"{where}\n  documented JSON, got {out[:300]!r}"]
        if not isinstance(value, list if documented[0] == "[" else dict):
            return [f"{where}\n  documented a JSON {documented[0]}, got {out[:300]!r}"]
    elif documented and expected_status == 0:
        got = (out or err).splitlines()
        if not got or got[0].split() != shell.unmap(documented[0]).split():
            return [f"{where}\n  first line documented: {documented[0]}\n  got: {got[:1]}"]
    return []


def check_toml(shell: Shell, block: Block) -> list[str]:
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        return [f"{block.where}: not TOML: {exc}"]
    if block.kind == "fragment":
        return []
    first = block.text.splitlines()[0] if block.text.strip() else ""
    name = first[2:].strip() if re.fullmatch(r"# [\w.-]+\.toml", first) else f".doc-test-{block.line}.toml"
    path = shell.cwd / name
    path.write_text(shell.map(block.text))
    path.chmod(0o600)                   # as a reader keeps a file that may hold keys (cli.md's setup)
    proc = shell.run(f"ipsp config check {shlex.quote(name)}", strict=False)
    if block.kind == "invalid":
        lines = proc.stderr.splitlines()
        if proc.returncode != 1 or len(lines) != 1 or not lines[0].startswith(f"{name}:"):
            return [f"{block.where}: an invalid file must give exit status 1 and one FILE:KEY line, got "
                    f"{proc.returncode}: {proc.stderr!r}"]
    elif proc.returncode != 0:
        return [f"{block.where}: ipsp config check refuses it: {shell.unmap(proc.stderr).strip()}"]
    return []


# -- a page, top to bottom ---------------------------------------------------------------------

def run_page(shell: Shell, page: str) -> list[str]:
    try:
        problems = _run_blocks(shell, page)
    finally:
        stopped = shell.stop()              # whatever happened: no daemon outlives its page
    return problems + stopped


def _run_blocks(shell: Shell, page: str) -> list[str]:
    problems: list[str] = []
    if page in EXTRA_SETUP:
        proc = shell.run(EXTRA_SETUP[page], strict=True)
        assert proc.returncode == 0, proc.stderr
    if page in SETUP_FROM:
        src, index = SETUP_FROM[page]
        setup = [b for b in blocks(src) if b.lang in SHELL_LANGS][index]
        proc = shell.run(setup.text, strict=True)
        assert proc.returncode == 0, f"{setup.where} (setup for {page}): {proc.stderr}"
    namespace: dict = {"__name__": "__doc_test__"}
    for block in blocks(page):
        if block.kind == "skip":
            continue
        if block.kind == "needs" and not shutil.which(block.arg, path=shell.env["PATH"]):
            continue
        if block.lang in ("sh", "bash", "shell"):
            if block.kind == "background":
                shell.start(block, block.text)
                continue
            proc = shell.run(block.text, strict=True)
            if proc.returncode != 0:
                problems.append(f"{block.where}: exit status {proc.returncode}\n"
                                f"  stdout: {shell.unmap(proc.stdout)[-1500:]}\n"
                                f"  stderr: {shell.unmap(proc.stderr)[-1500:]}")
        elif block.lang == "console":
            cmds = commands(block)
            if block.kind == "background":
                assert len(cmds) == 1, f"{block.where}: a background block holds one command"
                shell.start(block, cmds[0].text)
                continue
            for k, cmd in enumerate(cmds):
                status = None
                if k + 1 < len(cmds) and cmds[k + 1].text.strip() == "echo $?" and cmds[k + 1].output:
                    status = int(cmds[k + 1].output[0])
                problems += check_command(shell, block, cmd, status)
        elif block.lang == "toml":
            problems += check_toml(shell, block)
        elif block.lang == "python" and page == "docs/embedding.md":
            here = os.getcwd()
            try:
                os.chdir(shell.cwd)
                exec(compile(block.text, block.where, "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - reported with the block it came from
                problems.append(f"{block.where}: {type(exc).__name__}: {exc}")
            finally:
                os.chdir(here)
    return problems


# -- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_documented_commands_run_as_documented(page, tmp_path):
    problems = run_page(Shell(tmp_path), page)
    assert not problems, f"{page}: {len(problems)} documented command(s) or file(s) fail:\n\n" + "\n\n".join(problems)


def test_every_marker_is_known_and_says_why():
    kinds = {"skip", "background", "needs", "invalid", "fragment"}
    bad = [f"{b.where}: {b.kind} {b.arg!r}" for page in PAGES for b in blocks(page)
           if b.kind is not None and (b.kind not in kinds or not b.arg
                                      or (b.kind == "background" and '"' not in b.arg))]
    assert not bad, "doc-test markers need a known kind and a reason (background: the text it waits for):\n" + "\n".join(bad)
    for (page, first), _ in EXPLICIT.items():
        assert page not in PAGES or any(b.text.splitlines()[:1] == [first] for b in blocks(page)), (
            f"EXPLICIT names no block of {page}: {first}")


STANDARD_DIRS = {"etc", "run", "tmp", "usr", "dev", "proc", "sys", "var", "opt", "lib", "bin", "sbin"}


def test_no_command_names_a_path_of_one_machine():
    """A command a reader copies names files relative to the source tree or in the standard
    directories of any machine, never a checkout's place on the machine it was written on."""
    bad = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang not in SHELL_LANGS:
                continue
            lines = [c.text for c in commands(b)] if b.lang == "console" else b.text.splitlines()
            for line in lines:
                code = line.split("#", 1)[0]
                for m in re.finditer(r"(?<![^\s=\"'(])/([\w.-]+)/", code):
                    if m.group(1) not in STANDARD_DIRS:
                        bad.append(f"{b.where}: {line.strip()}")
    assert not bad, "commands naming one machine's paths:\n" + "\n".join(bad)


def test_skipped_shell_blocks_are_few():
    # a marker is for what cannot run here; if most commands are skipped the test proves nothing
    shell_blocks = [b for page in PAGES for b in blocks(page) if b.lang in SHELL_LANGS]
    skipped = [b for b in shell_blocks if b.kind == "skip"]
    assert len(skipped) * 3 < len(shell_blocks), [b.where for b in skipped]


def test_missing_extensions_say_how_to_build_them(tmp_path):
    """PYTHONPATH=src over a tree without built extensions: the error names the directory and
    the source-tree build, not a package that is on no index."""
    pkg = tmp_path / "src" / "fastpath"
    shutil.copytree(Path(fastpath.__file__).parent, pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import fastpath"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "src")})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("ImportError: "), proc.stderr
    assert str(pkg) in last and "source tree" in last and "build_ext --inplace" in last, last
    assert "pip install ipsp" not in last, last
