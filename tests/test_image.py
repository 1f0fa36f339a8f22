"""The container image, built with ``scripts/build-image.sh`` and run, with a real Docker
daemon and no image registry.

No registry is reachable here, so the base image is made from Debian's packages:
``debootstrap --variant=minbase bookworm`` into a directory, ``docker import``-ed as
``kpigate-base:bookworm`` (what ``debian:bookworm-slim`` is, give or take some files). The
daemon is private to this module: its own data root, exec root, socket and config under a
temporary directory, no bridge or iptables, so it touches nothing else on the machine; it is
stopped by its PID and the directory removed at the end. Its storage driver is overlay2, or
vfs where the kernel has no overlay (vfs copies the whole 1.2 GB image for every container
and build step: a run of this test with it here had not finished after 24 minutes; with
overlay2 it takes about 5).

What is checked, each against the real image: ``kpigate --help`` lists the checkout's
commands and ``--version`` is the checkout's, the in-cluster commands start, the process
runs as the Dockerfile's numeric user, the wheelhouse is not left in the image, a
wheelhouse for another Python is refused with both versions named, and the collector
serves ``GET /health`` over real HTTP from a container run like the Kubernetes manifests
run it (read-only root, a tmpfs ``/tmp``, every capability dropped, no privilege
escalation, the policy mounted read-only), then stops cleanly on SIGTERM.

One test function builds and checks everything: the suite runs under pytest-xdist's default
``--dist load``, which would split a module's tests across both workers and so build the
image twice.

Needs root (dockerd, debootstrap) and Debian's ``docker.io`` and ``debootstrap`` packages;
``scripts/setup.sh`` installs them, and the test installs them with apt-get when missing.
It skips, saying why, only when not run as root or when they cannot be installed.
Nothing is cached across runs: the base, the wheelhouse (pip's own download cache aside)
and the image are made anew each time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from processes import free_port

ROOT = Path(__file__).resolve().parents[1]
BASE_TAG = "kpigate-base:bookworm"
#: The commands the image's in-cluster pods run; each must start (``--help``) in the image.
#: The collector today; the operator joins this list when ``kpigate operator`` lands.
IN_CLUSTER_COMMANDS = ("collector", "operator")
#: The executables the test needs and the Debian package each comes from.
_DEBIAN_PACKAGES = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap"}
# Ceilings for a wedged tool or server, not performance thresholds.
_APT_CEILING_S = 600
_DEBOOTSTRAP_CEILING_S = 900
_BUILD_CEILING_S = 1500
_DOCKER_CEILING_S = 180
_START_CEILING_S = 120


# -- the tools ---------------------------------------------------------------------------------
def _missing_tools() -> list[str]:
    return sorted({pkg for exe, pkg in _DEBIAN_PACKAGES.items() if shutil.which(exe) is None})


def _install_tools() -> None:
    """Install the missing Debian packages, or skip saying why they could not be."""
    missing = _missing_tools()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"the image test needs Debian's {' '.join(missing)} and there is no "
                    "apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    result = subprocess.run(install, capture_output=True, text=True, env=env,
                            timeout=_APT_CEILING_S, check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env,
                       timeout=_APT_CEILING_S, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env,
                                timeout=_APT_CEILING_S, check=False)
    if result.returncode != 0 or _missing_tools():
        pytest.skip(f"the image test needs Debian's {' '.join(missing)}, which apt-get could "
                    f"not install: {(result.stdout + result.stderr).strip()[-500:]}")


# -- a private Docker daemon -------------------------------------------------------------------
@dataclass
class Docker:
    """The docker CLI pointed at the private daemon."""

    root: Path
    env: dict[str, str]
    driver: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Measure a step (printed, so `pytest -s` shows each as it ends)."""
        started = time.monotonic()
        yield
        self.timings[step] = time.monotonic() - started
        print(f"image test: {step} {self.timings[step]:.1f} s", flush=True)

    def run(self, *args: str, timeout: float = _DOCKER_CEILING_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], capture_output=True, text=True,
                                env=self.env, timeout=timeout, check=False)
        if check:
            assert result.returncode == 0, \
                f"docker {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}"
        return result


def _pids_using(root: Path) -> list[int]:
    """Processes whose command line names ``root``: what the daemon left (containerd, shims)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(root).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _unmount_under(root: Path) -> None:
    """Anything still mounted below ``root`` (a daemon killed mid-way), deepest first."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(f"{root}/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _stop(process: subprocess.Popen[bytes], root: Path) -> None:
    """SIGTERM the daemon by its PID (it stops containers and its containerd), SIGKILL it if
    it lingers, then SIGKILL by PID whatever process still names the private root."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    for _ in range(3):
        leftovers = _pids_using(root)
        if not leftovers:
            break
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)


def _start_daemon(root: Path, driver: str) -> subprocess.Popen[bytes]:
    log = (root / f"dockerd-{driver}.log").open("wb")
    try:
        return subprocess.Popen(
            ["dockerd", "--config-file", str(root / "config.json"),
             "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "docker.pid"), "-H", f"unix://{root / 'docker.sock'}",
             f"--storage-driver={driver}", "--iptables=false", "--ip6tables=false",
             "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


@contextlib.contextmanager
def _docker_daemon(root: Path) -> Iterator[Docker]:
    """``dockerd`` with everything of its own under ``root``; stopped by its PID on exit.

    overlay2 first: vfs, the driver that works everywhere, copies the whole image (1.2 GB)
    twice for every container and every build step, which took minutes per ``docker run``
    here; where the kernel or the filesystem has no overlay, dockerd refuses to start with
    it and vfs is used."""
    (root / "config.json").write_text("{}", encoding="utf-8")
    (root / "cli").mkdir()
    env = {**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}",
           "DOCKER_CONFIG": str(root / "cli"), "TMPDIR": str(root)}
    env.pop("DOCKER_CONTEXT", None)
    docker = Docker(root, env)
    process = None
    try:
        for driver in ("overlay2", "vfs"):
            process = _start_daemon(root, driver)
            deadline = time.monotonic() + _START_CEILING_S
            while docker.run("info", check=False).returncode != 0:
                if process.poll() is not None:
                    break
                assert time.monotonic() < deadline, \
                    f"dockerd did not answer: {_tail(root / f'dockerd-{driver}.log')}"
                time.sleep(0.5)
            if process.poll() is None:
                docker.driver = driver
                break
        assert process is not None
        assert process.poll() is None, \
            f"dockerd exited {process.returncode}: {_tail(root / 'dockerd-vfs.log')}"
        yield docker
    finally:
        if process is not None:
            _stop(process, root)


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    return ""


# -- the fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    if os.geteuid() != 0:
        pytest.skip("the image test runs dockerd and debootstrap, which need root")
    _install_tools()
    root = Path(tempfile.mkdtemp(prefix="kpigate-image-"))
    try:
        with _docker_daemon(root) as daemon:
            yield daemon
            print(f"image test ({daemon.driver}): " + ", ".join(
                f"{step} {seconds:.1f} s" for step, seconds in daemon.timings.items()))
    finally:
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(docker: Docker) -> str:
    """Debian bookworm (minbase) from Debian's packages, imported as an image."""
    rootfs = docker.root / "rootfs"
    with docker.timed("debootstrap"):
        result = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
                                capture_output=True, text=True, timeout=_DEBOOTSTRAP_CEILING_S,
                                check=False)
    assert result.returncode == 0, f"debootstrap: {(result.stdout + result.stderr)[-3000:]}"
    with docker.timed("docker import"):
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(["docker", "import", "-", BASE_TAG], stdin=tar.stdout,
                                      capture_output=True, text=True, env=docker.env,
                                      timeout=_DOCKER_CEILING_S, check=False)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=_DOCKER_CEILING_S)
    assert (tar.returncode, imported.returncode) == (0, 0), imported.stderr
    shutil.rmtree(rootfs)
    return BASE_TAG


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    output: str


@pytest.fixture(scope="module")
def image(docker: Docker, base_image: str) -> BuiltImage:
    """The image, built by the script under test from the checkout."""
    tag = f"kpigate-test:{uuid.uuid4().hex[:12]}"
    with docker.timed("build-image.sh"):
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-image.sh"), "--base", base_image,
             "--tag", tag], cwd=ROOT, capture_output=True, text=True,
            env={**docker.env, "PYTHON": sys.executable}, timeout=_BUILD_CEILING_S, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"build-image.sh exited {result.returncode}: {output[-5000:]}"
    for step, seconds in re.findall(r"^build-image: (.+) took (\d+) s$", output, re.MULTILINE):
        docker.timings[f"  {step}"] = float(seconds)
        print(f"image test:   {step} {seconds} s", flush=True)
    return BuiltImage(tag, output)


# -- helpers -----------------------------------------------------------------------------------
def _commands(help_text: str) -> set[str]:
    """The command names of a click group's ``--help``."""
    _, _, listing = help_text.partition("\nCommands:\n")
    return set(re.findall(r"^  ([a-z][-a-z0-9]*)\s", listing, flags=re.MULTILINE))


def _host_kpigate(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=_DOCKER_CEILING_S,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return result.stdout


def _dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"),
                       flags=re.MULTILINE)
    assert len(users) == 1, users
    return users[0]


def _offline(docker: Docker, image: str, *args: str,
             entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["run", "--rm", "--network", "none"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return docker.run(*cmd, image, *args, check=False)


def _check_cli(docker: Docker, image: str) -> None:
    """``kpigate`` (ENTRYPOINT, CMD ``--help``) lists the checkout's commands, and each
    in-cluster command starts."""
    shown = _offline(docker, image)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Usage: kpigate "), shown.stdout
    commands = _commands(shown.stdout)
    assert commands == _commands(_host_kpigate("--help")), shown.stdout
    assert set(IN_CLUSTER_COMMANDS) <= commands
    for command in IN_CLUSTER_COMMANDS:
        result = _offline(docker, image, command, "--help")
        assert result.returncode == 0, f"kpigate {command} --help: {result.stderr}"
        assert result.stdout.startswith(f"Usage: kpigate {command} "), result.stdout


def _check_user_and_contents(docker: Docker, image: str) -> None:
    """The Dockerfile's numeric user, HOME, the venv's kpigate at the checkout's version
    with its seldon extra (the operator's and the cluster rollout's clients), no wheelhouse
    left; one container for all of it."""
    user = _dockerfile_user()
    assert int(user) != 0
    script = ("id -u; id -g; echo $HOME; command -v kpigate; kpigate --version; "
              "python -c 'import mlflow_kpigate, kubernetes, prometheus_api_client, sys; "
              "print(sys.prefix)'; "
              "for p in /wheels /src; do if [ -e $p ]; then echo $p is left; fi; done")
    result = _offline(docker, image, "-c", script, entrypoint="sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        user, user, "/tmp", "/opt/kpigate/bin/kpigate", _host_kpigate("--version").strip(),
        "/opt/kpigate"], result.stdout
    config = docker.run("image", "inspect", "--format",
                        "{{json .Config.Entrypoint}} {{json .Config.ExposedPorts}}", image)
    assert config.stdout.split(" ", 1)[0] == '["kpigate"]'
    for port in ("8080/tcp", "9102/tcp", "8081/tcp"):
        assert port in config.stdout


def _check_wrong_python_is_refused(docker: Docker, base: str) -> None:
    """A wheelhouse for another Python stops the build with both versions named (the
    runtime stage comes from the cache of the real build, so this takes seconds)."""
    context = docker.root / "wrong-python"
    (context / "wheels").mkdir(parents=True)
    (context / "wheels" / "python-version").write_text("3.99\n", encoding="ascii")
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, context / name)
    result = docker.run("build", "--network", "host", "--force-rm",
                        "--build-arg", f"BASE_IMAGE={base}",
                        "--target", "build", str(context), check=False,
                        timeout=_BUILD_CEILING_S)
    assert result.returncode != 0
    assert "the wheelhouse is for Python 3.99 but the base image's python3 is 3.11" in \
        result.stdout + result.stderr
    shutil.rmtree(context)


def _check_collector_serves(docker: Docker, image: str) -> None:
    """`kpigate collector` in a container confined like the Kubernetes Deployment's pod."""
    policy_dir = docker.root / "policy"
    policy_dir.mkdir()
    shutil.copy(ROOT / "examples" / "policies" / "minimal.yaml", policy_dir / "policy.yaml")
    os.chmod(policy_dir, 0o755)
    os.chmod(policy_dir / "policy.yaml", 0o644)
    port = free_port()
    name = f"kpigate-test-collector-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker.run("run", "-d", "--name", name, "--network", "host", "--read-only",
               "--tmpfs", "/tmp:rw,mode=1777", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges",
               "-v", f"{policy_dir}:/policy:ro", image,
               "collector", "--deployment", "demo", "--policy", "/policy/policy.yaml",
               "--data-dir", "/tmp/data", "--host", "127.0.0.1", "--port", str(port),
               "--insecure-no-auth")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + _START_CEILING_S
        while True:
            state = docker.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"the collector exited: {docker.run('logs', name).stderr}"
            try:
                health = requests.get(f"{url}/health", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, docker.run("logs", name).stderr
                time.sleep(0.5)
        print(f"image test: collector answered after {time.monotonic() - started:.1f} s")
        assert (health.status_code, health.json()) == (200, {"status": "ok"}), health.text
        status = requests.get(f"{url}/status", timeout=5)
        assert status.status_code == 200, status.text
        assert (status.json()["deployment"], status.json()["auth"]) == ("demo", "off")
        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "kpigate_" in metrics.text
        top = docker.run("top", name, "-o", "pid,uid,args").stdout
        assert re.search(rf"^\s*\d+\s+{_dockerfile_user()}\s+.*kpigate collector", top,
                         re.MULTILINE), top
        docker.run("stop", "--time", "30", name, timeout=_DOCKER_CEILING_S)
        code = docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", f"the collector exited {code} on SIGTERM: " \
                            f"{docker.run('logs', name).stderr[-2000:]}"
    finally:
        docker.run("rm", "-f", name, check=False)
        shutil.rmtree(policy_dir, ignore_errors=True)


# -- the test ----------------------------------------------------------------------------------
def test_the_image_builds_offline_and_runs_kpigate_as_its_non_root_user(docker, base_image,
                                                                        image):
    assert "--no-index" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert not list(docker.root.glob("kpigate-image.*")), "build-image.sh left its context"
    with docker.timed("offline runs"):
        _check_cli(docker, image.tag)
        _check_user_and_contents(docker, image.tag)
    with docker.timed("collector run"):
        _check_collector_serves(docker, image.tag)
    with docker.timed("wrong-Python build"):
        _check_wrong_python_is_refused(docker, base_image)
    assert not docker.run("ps", "-aq").stdout.strip(), "every container is removed"


def test_build_image_script_rejects_bad_arguments_and_a_missing_daemon(tmp_path):
    script = str(ROOT / "scripts" / "build-image.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True,
                           timeout=_DOCKER_CEILING_S, check=False)
    assert shown.returncode == 0
    assert "--base IMAGE" in shown.stdout
    assert "--tag TAG" in shown.stdout
    bad = subprocess.run(["bash", script, "--colour", "red"], capture_output=True, text=True,
                         timeout=_DOCKER_CEILING_S, check=False)
    assert bad.returncode == 2
    assert "unknown argument --colour" in bad.stderr
    nowhere = subprocess.run(["bash", script], capture_output=True, text=True,
                             timeout=_DOCKER_CEILING_S, check=False,
                             env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
                                  "DOCKER_CONFIG": str(tmp_path), "TMPDIR": str(tmp_path)})
    assert nowhere.returncode == 2
    assert ("cannot reach a Docker daemon" in nowhere.stderr
            or "the docker CLI is not installed" in nowhere.stderr), nowhere.stderr
    assert not list(tmp_path.glob("kpigate-image.*"))
