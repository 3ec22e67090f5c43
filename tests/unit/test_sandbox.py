#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""The pure parts of the sandbox: mount lookup, tgtd listings, sessions."""

import configparser
import os
import subprocess

import pytest

from fuse_cinder.allinone import sandbox

MOUNTS = [('/', 'ext4'), ('/mnt/fuse', 'fuse.bindfs'),
          ('/mnt/fuse/deeper', 'tmpfs'), ('/mnt/fuse space', 'fuse.sshfs'),
          ('/mnt/fuse2', 'ext4')]


@pytest.fixture
def fake_mounts(monkeypatch):
    monkeypatch.setattr(sandbox, 'mounts', lambda: MOUNTS)


@pytest.mark.parametrize('path, mount', [
    ('/mnt/fuse/volumes', ('/mnt/fuse', 'fuse.bindfs')),
    ('/mnt/fuse', ('/mnt/fuse', 'fuse.bindfs')),
    ('/mnt/fuse/deeper/v', ('/mnt/fuse/deeper', 'tmpfs')),
    ('/mnt/fuse space/v', ('/mnt/fuse space', 'fuse.sshfs')),
    # A name prefix is not a parent directory.
    ('/mnt/fuse2/volumes', ('/mnt/fuse2', 'ext4')),
    ('/mnt/fusex', ('/', 'ext4')),
    ('/mnt/fuse/../fuse2/v', ('/mnt/fuse2', 'ext4')),
])
def test_mount_of_is_the_longest_parent(fake_mounts, path, mount):
    assert sandbox.mount_of(path) == mount


def test_is_fuse(fake_mounts):
    assert sandbox.is_fuse('/mnt/fuse/volumes')
    assert sandbox.is_fuse('/mnt/fuse space/x')
    assert not sandbox.is_fuse('/mnt/fuse/deeper/x')
    assert not sandbox.is_fuse('/var/tmp')


def test_mounts_unescape_the_kernel_table():
    # Whatever this machine mounts, "/" is there and names are plain.
    table = sandbox.mounts()
    assert any(point == '/' for point, _fs in table)
    assert not any('\\040' in point for point, _fs in table)


SHOW = """Target 1: iqn.2010-10.org.openstack:volume-a
    System information:
        Driver: iscsi
        State: ready
Target 12: iqn.2010-10.org.openstack:volume-b
    System information:
        Driver: iscsi
"""
ACCOUNTS = """Account list:
    user1
    user2
"""


def test_tgtd_listings(monkeypatch):
    def fake(port, *args, timeout=30):
        assert port == 41
        out = ACCOUNTS if 'account' in args else SHOW
        return subprocess.CompletedProcess(args, 0, out, '')

    monkeypatch.setattr(sandbox, 'tgtadm', fake)
    assert sandbox.list_targets(41) == {
        'iqn.2010-10.org.openstack:volume-a': 1,
        'iqn.2010-10.org.openstack:volume-b': 12}
    assert sandbox.list_accounts(41) == ['user1', 'user2']


def test_kill_session_reaches_grandchildren():
    # A shell in its own session starting a grandchild, as tgt-admin or
    # timeout would be under the services.
    proc = subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300; wait'],
                            start_new_session=True)
    try:
        assert sandbox.wait_for(
            lambda: len(sandbox.session_members(proc.pid)) == 3, 10)
        below = sandbox.descendants(proc.pid)
        assert len(below) == 2
        killed = sandbox.kill_session(proc.pid)
        assert sorted(killed) == sorted([proc.pid] + below)
        proc.wait(timeout=10)
        assert sandbox.wait_for(
            lambda: sandbox.session_members(proc.pid) == [], 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_free_port_skips_a_listening_port():
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert not sandbox.tcp_port_free(busy)
        assert sandbox.free_port([busy]) is None


def test_private_tgtd_runs_as_the_shipped_unit_drop_in_makes_tgtd_run():
    """The figures of the all-in-one and the benchmark hold in production."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'etc', 'systemd', 'tgt.service.d',
        'fuse-cinder.conf')
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    with open(path) as f:
        # systemd repeats keys (ExecStart= resets the list); keep the last.
        lines = [line for line in f if not line.startswith('ExecStart=\n')]
    unit.read_string(''.join(lines))
    service = unit['Service']
    name, _, value = service['Environment'].partition('=')
    assert {name: value} == sandbox.TGTD_ENV
    assert service['ExecStart'].split() == [
        '/usr/sbin/tgtd', '-f', *sandbox.TGTD_ARGS]
