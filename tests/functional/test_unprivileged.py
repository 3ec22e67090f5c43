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
"""The driver as production runs it: unprivileged, through cinder-rootwrap.

Every other functional test runs the driver as root, where a rootwrap
filter that refuses what the driver needs goes unnoticed. Here a
throw-away system user runs the driver (``unprivileged_driver.py``) with
Cinder's real root helper, ``sudo cinder-rootwrap``, reading exactly the
checkout's ``etc/cinder/rootwrap.d``, through the volume life cycle with
real iSCSI I/O from root's side. volumes_home is root's alone (0700), so
nothing gets done unless the root helper lets it. Only the driver's Cinder
interface is used: the test holds whatever commands the driver runs.

Ports: tgtd control ports 70-79 and portals 127.0.0.1:13311-13319.
"""

import contextlib
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from fuse_cinder.allinone import sandbox
from tests.functional import test_tgt_export
from tests.functional import tgtd

GiB = 1 << 30
MiB = 1 << 20
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FILTERS_PATH = os.path.join(CHECKOUT, 'etc', 'cinder', 'rootwrap.d')
VENV_BIN = os.path.dirname(sys.executable)
ROOTWRAP = os.path.join(VENV_BIN, 'cinder-rootwrap')
BACKEND = 'fuse_unpriv'
IDS = ['%08d-0000-4000-8000-00000000a%03d' % (i, i) for i in range(4)]
HOST = test_tgt_export.HOST1
CONNECTOR = {'initiator': HOST, 'ip': '127.0.0.1', 'host': 'unpriv-host',
             'multipath': False}
# Seconds one driver step may take (a copy reads 1 GiB through bindfs).
STEP_TIMEOUT = 120
# How cinder-rootwrap says no (oslo_rootwrap.cmd, wrapper.NoFilterMatched).
REFUSALS = ('Unauthorized command', 'NoFilterMatched', 'no filter matched')

pytestmark = tgtd.requirements(
    'bindfs', 'qemu-img', 'iscsi-inq', 'iscsi-readcapacity16', 'sudo',
    'visudo', 'useradd', 'userdel') + [
    pytest.mark.skipif(not os.access(ROOTWRAP, os.X_OK),
                       reason='no cinder-rootwrap next to %s'
                       % sys.executable)]


class Tgtd(tgtd.Tgtd):
    """The suite's private tgtd, on the ports kept for this module."""

    control_ports = range(70, 80)
    portal_ports = range(13311, 13320)


def _mkdir(path, mode, owner=None):
    os.mkdir(path)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except FileNotFoundError:
        return ''


def as_user(user, workdir):
    """Popen arguments running a process as ``user``, with this checkout."""
    return sandbox.as_user(user, workdir, CHECKOUT)


def skip_unless_usable(user):
    """Skip when the user cannot run this venv's Python at all.

    A venv built on an interpreter under /root (pyenv) is root's only;
    CI builds it on the system Python.
    """
    why = sandbox.user_cannot_run(
        user, sys.executable, ['cinder.volume.driver', 'fuse_cinder.driver',
                               'tests.functional.volumes'], CHECKOUT)
    if why:
        pytest.skip(why)


class Child:
    """The unprivileged cinder-volume, driven one driver call at a time."""

    def __init__(self, stack, user, cinder_conf, workdir):
        self.user = user
        self.stderr_path = os.path.join(workdir, 'stderr.log')
        with open(self.stderr_path, 'wb') as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'tests.functional.unprivileged_driver',
                 cinder_conf, BACKEND],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True, text=True,
                **as_user(user, workdir))
        stack.callback(self.stop)
        self._answers = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True).start()

    def _read_answers(self):
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def _stderr_tail(self, lines=40):
        return '\n'.join(_read(self.stderr_path).splitlines()[-lines:])

    def step(self, step, **args):
        """Run one driver call in the child; fail the test if it fails."""
        try:
            self.proc.stdin.write(json.dumps(dict(args, step=step)) + '\n')
            self.proc.stdin.flush()
            line = self._answers.get(timeout=STEP_TIMEOUT)
        except BrokenPipeError:
            line = None
        except queue.Empty:
            pytest.fail('driver step %s gave no answer within %d s; stderr '
                        'of the unprivileged driver:\n%s'
                        % (step, STEP_TIMEOUT, self._stderr_tail()))
        if line is None:
            pytest.fail('the unprivileged driver process died before '
                        'answering step %s (exit code %s):\n%s'
                        % (step, self.proc.wait(timeout=30),
                           self._stderr_tail()))
        answer = json.loads(line)
        if not answer['ok']:
            refused = any(word in answer['error'] for word in REFUSALS)
            pytest.fail(
                'driver step %s failed as user %s (uid %d)%s:\n%s\n%s'
                % (step, self.user.pw_name, self.user.pw_uid,
                   ': cinder-rootwrap refused a command, a filter in '
                   'etc/cinder/rootwrap.d is missing or too narrow for it'
                   if refused else '', answer['error'],
                   answer['traceback']))
        return answer['result']

    def stop(self, timeout=30):
        """End of input ends the child; its session is killed otherwise."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                sandbox.kill_session(self.proc.pid)
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Deployment:
    """A cinder-volume host whose driver runs as an unprivileged user."""

    def __init__(self, stack):
        self.stack = stack
        self.base = tempfile.mkdtemp(prefix='fuse-cinder-unpriv-')
        stack.callback(shutil.rmtree, self.base, ignore_errors=True)
        os.chmod(self.base, 0o755)
        self.user = sandbox.make_user(stack)
        skip_unless_usable(self.user)

        # Root's: the root helper's config, and what sudo and tgtd log.
        # The configs live under /etc as on a real host, where rootwrap
        # filters for privsep-helper expect ``--config-file /etc/...``.
        etc = tempfile.mkdtemp(prefix='fuse-cinder-unpriv-', dir='/etc')
        stack.callback(shutil.rmtree, etc, ignore_errors=True)
        os.chmod(etc, 0o755)
        self.rootwrap_conf = sandbox.write_rootwrap_conf(
            os.path.join(etc, 'rootwrap.conf'), VENV_BIN, FILTERS_PATH)
        self.sudo_log = os.path.join(self.base, 'sudo.log')
        sandbox.allow_root_helper(
            stack, self.user, ROOTWRAP, self.rootwrap_conf,
            _mkdir(os.path.join(self.base, 'scratch'), 0o700),
            pythonpath=CHECKOUT, sudo_log=self.sudo_log)
        self.initiator_dir = _mkdir(os.path.join(self.base, 'initiator'),
                                    0o700)

        # Root's, and closed to the user: the mount and volumes_home.
        self.fuse = sandbox.ScratchMount(os.path.join(self.base, 'fuse'))
        stack.callback(self.fuse.stop)
        self.fuse.start()
        os.chmod(os.path.join(self.fuse.backing, 'volumes'), 0o700)
        self.daemon = Tgtd(log_path=os.path.join(self.base, 'tgtd.log'))
        stack.callback(self.daemon.stop)
        self.daemon.start()

        # The user's: tgt config files, locks, the service's log.
        self.workdir = _mkdir(os.path.join(self.base, 'cinder'), 0o700,
                              self.user)
        self.volumes_dir = os.path.join(self.workdir, 'targets')
        self.log_file = os.path.join(self.workdir, 'cinder-volume.log')
        _mkdir(os.path.join(self.workdir, 'locks'), 0o700, self.user)
        self.cinder_conf = sandbox.write_new(
            os.path.join(etc, 'cinder.conf'), '\n'.join([
                '[DEFAULT]',
                'rootwrap_config = %s' % self.rootwrap_conf,
                'state_path = %s' % self.workdir,
                'enabled_backends = %s' % BACKEND,
                'debug = True',
                'log_file = %s' % self.log_file,
                '[oslo_concurrency]',
                'lock_path = %s' % os.path.join(self.workdir, 'locks'),
                '[%s]' % BACKEND,
                'volume_driver = fuse_cinder.driver.FuseISCSIDriver',
                'volume_backend_name = %s' % BACKEND,
                'volumes_home = %s' % self.fuse.volumes_home,
                'volumes_dir = %s' % self.volumes_dir,
                'target_ip_address = 127.0.0.1',
                'target_port = %d' % self.daemon.portal_port,
                'fuse_tgt_control_port = %d' % self.daemon.control_port,
                'fuse_fs_call_timeout = 30', '']))

    def start_child(self):
        return Child(self.stack, self.user, self.cinder_conf, self.workdir)

    def backing(self, kind, object_id):
        """The file of a volume or snapshot, seen from under the mount."""
        return self.fuse.backing_path('%s-%s' % (kind, object_id))

    def logs(self):
        return _read(os.path.join(self.workdir, 'stderr.log')) + _read(
            self.log_file)


@pytest.fixture
def deployment():
    """Everything it makes is undone at the end, failed test or not."""
    with contextlib.ExitStack() as stack:
        yield Deployment(stack)


def read_file(path, offset, size):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(size)


def initiator(deployment, connection):
    """A real initiator (qemu, libiscsi) built from initialize_connection."""
    assert connection['driver_volume_type'] == 'iscsi'
    data = connection['data']
    assert data['target_portal'] == deployment.daemon.portal
    assert data['target_lun'] == 1
    assert data['auth_method'] == 'CHAP'
    return test_tgt_export.Initiator(
        deployment.daemon, deployment.initiator_dir, data['target_iqn'],
        'CHAP %s %s' % (data['auth_username'], data['auth_password']), HOST)


def test_life_cycle_through_cinder_rootwrap(deployment):
    # The user can change neither the root helper's rules nor the files.
    for path in (os.path.dirname(deployment.rootwrap_conf),
                 deployment.rootwrap_conf,
                 sandbox.sudoers_path(deployment.user)):
        st = os.stat(path)
        assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP |
                                                    stat.S_IWOTH), path
    st = os.stat(deployment.fuse.volumes_home)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    vol, snap, clone, from_snap = IDS
    child = deployment.start_child()

    who = child.step('setup', volumes_home=deployment.fuse.volumes_home)
    assert who['uid'] == who['euid'] == deployment.user.pw_uid != 0
    assert who['gid'] == deployment.user.pw_gid and who['groups'] == []
    assert who['list_volumes_home'] == 'PermissionError'

    child.step('create_volume', volume=vol, size=1)
    path = deployment.backing('volume', vol)
    assert os.path.getsize(path) == GiB
    assert os.stat(path).st_uid == 0

    child.step('create_export', volume=vol, connector=CONNECTOR)
    ini = initiator(deployment, child.step(
        'initialize_connection', volume=vol, connector=CONNECTOR))
    # What cinder-volume does at start-up for a volume still exported.
    assert child.step('ensure_export', volume=vol) is None
    data = os.urandom(4 * MiB)
    offset = 300 * MiB + 4096
    ini.write(offset, data)
    assert ini.read(offset, len(data)) == data
    assert read_file(path, offset, len(data)) == data

    child.step('create_snapshot', snapshot=snap, volume=vol)
    child.step('create_cloned_volume', volume=clone, size=2, source=vol)
    child.step('create_volume_from_snapshot', volume=from_snap, size=1,
               snapshot=snap)
    for kind, object_id, size in (('snapshot', snap, 1),
                                  ('volume', clone, 2),
                                  ('volume', from_snap, 1)):
        copy = deployment.backing(kind, object_id)
        assert os.path.getsize(copy) == size * GiB, copy
        assert read_file(copy, offset, len(data)) == data, copy

    child.step('extend_volume', volume=vol, size=2)
    assert os.path.getsize(path) == 2 * GiB
    assert ini.capacity() == 2 * GiB
    assert ini.read(offset, len(data)) == data
    stats = child.step('get_volume_stats')
    assert stats['backend_state'] == 'up'
    assert stats['provisioned_capacity_gb'] == 2 + 1 + 2 + 1

    child.step('terminate_connection', volume=vol, connector=CONNECTOR)
    child.step('remove_export', volume=vol)
    assert deployment.daemon.targets() == {}
    assert sandbox.list_accounts(deployment.daemon.control_port) == []

    for volume_id in (vol, clone, from_snap):
        child.step('delete_volume', volume=volume_id)
    child.step('delete_snapshot', snapshot=snap)
    assert os.listdir(os.path.dirname(path)) == []
    assert child.stop() == 0, child._stderr_tail()

    refused = [line for line in deployment.logs().splitlines()
               if any(word in line for word in REFUSALS)]
    assert not refused, '\n'.join(refused)
    # It really went through sudo and rootwrap, as the user.
    sudo_log = _read(deployment.sudo_log)
    assert sudo_log.count('COMMAND=%s %s ' % (
        ROOTWRAP, deployment.rootwrap_conf)) >= 10, sudo_log
    assert 'not allowed' not in sudo_log
