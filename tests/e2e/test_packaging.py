"""The gateway as a wheel installs it, away from this checkout: its defaults, its schema and
its API description travel with the code (they are links into config.yaml, xsd/ and docs/
here; a wheel once held none of them, and an installed gateway could not start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from tests.brokers import wait_until
from tests.conftest import ROOT, SAMPLES
from tests.e2e.servers import free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed into a folder of its own (its
    dependencies are this venv's)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = out.glob("smile_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"gateway/defaults.yaml", "gateway/xsd/smile-2.xsd", "gateway/openapi.yaml"} <= names
    target = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def env_for(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(site)  # before this venv's editable link to the checkout
    return env


def gateway(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env_for(site),
                          capture_output=True, text=True, timeout=60)


def test_the_installed_gateway_checks_its_config_and_validates(installed: Path,
                                                              tmp_path: Path) -> None:
    where = gateway(installed, tmp_path, "--version")
    found = subprocess.run([sys.executable, "-c", "import gateway; print(gateway.__file__)"],
                           cwd=tmp_path, env=env_for(installed), capture_output=True,
                           text=True, check=True)
    assert found.stdout.startswith(str(installed)), found.stdout  # not this checkout
    assert where.returncode == 0, where.stderr
    checked = gateway(installed, tmp_path, "check-config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("configuration OK (<defaults>;")
    valid = gateway(installed, tmp_path, "validate", str(SAMPLES))
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_the_installed_gateway_serves_and_describes_its_api(installed: Path,
                                                           tmp_path: Path) -> None:
    port = free_port()
    env = {**env_for(installed), "GATEWAY_WEBHOOK__PORT": str(port)}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, 30, what="the installed gateway to answer /healthz")
        api = requests.get(f"{url}/openapi.yaml", timeout=5)
        assert api.status_code == 200
        assert api.content == (ROOT / "docs" / "openapi.yaml").read_bytes()
        posted = requests.post(f"{url}/smile/messages", timeout=10,
                               data=(SAMPLES / "SubscriptionActivated.xml").read_bytes(),
                               headers={"Content-Type": "application/xml"})
        assert posted.status_code == 202, posted.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert (tmp_path / "var" / "gateway.db").is_file()  # the default store, where it ran
