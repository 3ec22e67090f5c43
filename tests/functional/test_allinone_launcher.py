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
"""The README's main job: ``fuse-cinder-allinone`` started for real.

The launcher runs as a subprocess, as a terminal would run it, with a
patched copy of the installed Cinder first on its path (so its own patch
step finds the patches applied and changes nothing).  The test waits for
the environment it prints, drives it with the real ``cinder`` command,
then sends the SIGINT that Ctrl-C would and checks that nothing is left:
no tgtd on its control port, no mount, no process.

Ports: whatever the launcher picks among its defaults (API 18780-18789,
tgtd control 41-49, portal 127.0.0.1:13281-13289).
"""

import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from fuse_cinder.allinone import sandbox
from tests.functional import patched_cinder

MiB = 1 << 20

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root'),
    patched_cinder.needs_cinder_cli,
    pytest.mark.skipif(
        bool(sandbox.missing_programs('tgtd', 'tgtadm', 'tgt-admin',
                                      'bindfs', 'qemu-io', 'patch')),
        reason='tgt, bindfs, qemu-utils or patch missing (bindep.txt)'),
]


@pytest.fixture(scope='module')
def site():
    # Readable by all: --unprivileged runs Cinder as another user.
    top = tempfile.mkdtemp(prefix='fuse-cinder-aio-test-', dir='/var/tmp')
    try:
        os.chmod(top, 0o755)
        yield patched_cinder.patched_copy(os.path.join(top, 'cinder'))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _start_time(pid):
    fields = sandbox.proc_stat(pid)
    return None if fields is None else fields[19]      # proc(5) starttime


def path_without_our_bin():
    """PATH as in a shell where the virtualenv is not activated."""
    ours = os.path.dirname(sys.executable)
    return os.pathsep.join(d for d in os.environ['PATH'].split(os.pathsep)
                           if d != ours)


class Launcher(object):
    """fuse-cinder-allinone in its own session, killed if still running."""

    def __init__(self, site, out_path, *args):
        self.out_path = str(out_path)
        with open(self.out_path, 'wb') as out:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'fuse_cinder.allinone'] + list(args),
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PATH=path_without_our_bin(),
                         PYTHONPATH=patched_cinder.pythonpath(site)))

    @property
    def output(self):
        with open(self.out_path, errors='replace') as f:
            return f.read()

    def wait_for_output(self, pattern, timeout):
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError('the launcher exited with %s:\n%s'
                                     % (self.proc.returncode, self.output))
            return re.search(pattern, self.output, re.M)

        found = sandbox.wait_for(seen, timeout, interval=0.2)
        assert found, 'no %r after %d s:\n%s' % (pattern, timeout,
                                                 self.output)
        return found

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('the launcher did not exit within %d s:\n%s'
                                 % (timeout, self.output))

    def kill(self):
        """Last resort after a failure: the whole tree, hard.

        A killed launcher cannot unmount its FUSE mount, which would
        outlive the test: detach what is left under the test's directory.
        """
        if self.proc.poll() is not None:
            return          # it stopped by itself: the test checks the rest
        for pid in sandbox.descendants(self.proc.pid):
            sandbox.kill_session(pid)
        sandbox.kill_session(self.proc.pid)
        self.proc.wait(timeout=30)
        test_dir = os.path.dirname(self.out_path) + os.sep
        for point, _fs in sandbox.mounts():
            if point.startswith(test_dir):
                subprocess.run(['umount', '-l', point], check=False)


def run_to_end(site, tmp_path, timeout, *args):
    """The launcher run until it exits by itself: (exit code, output)."""
    launcher = Launcher(site, tmp_path / 'launcher.out', *args)
    try:
        code = launcher.wait(timeout)
    finally:
        launcher.kill()
    return code, launcher.output, launcher


def _cli_env(export_line):
    """The environment a shell has after the printed ``export ...`` line.

    Nothing else is added: the line alone must make ``cinder`` work,
    ``cinder export`` included.
    """
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run(['bash', '-c', export_line + '\nexec env -0'],
                         env=env, capture_output=True, check=True).stdout
    return dict(item.split('=', 1) for item in out.decode().split('\0')
                if '=' in item)


def _cinder(env, *args):
    # The command found on the printed PATH, as a user would run it.
    res = subprocess.run(['cinder'] + list(args), capture_output=True,
                         text=True, timeout=180, env=env)
    assert res.returncode == 0, '%s failed:\n%s%s' % (
        ' '.join(args), res.stdout, res.stderr)
    return res.stdout


def _show(env, vol, what='show'):
    res = subprocess.run(['cinder', what, vol], capture_output=True,
                         text=True, timeout=180, env=env)
    if res.returncode != 0:
        return None
    return [line.split('|')[2].strip() for line in res.stdout.splitlines()
            if line.startswith('| status ')][0]


def _wait_status(env, vol, wanted, timeout=120, what='show'):
    seen = []

    def reached():
        seen[:] = [_show(env, vol, what)]
        return seen[0] == wanted

    assert sandbox.wait_for(reached, timeout, interval=0.5), (
        '%s %s is %s, not %s' % (what, vol, seen, wanted))


def _iscsi_url(info):
    return 'iscsi://%s%%%s@%s/%s/%s' % (
        info['auth_username'], info['auth_password'], info['target_portal'],
        info['target_iqn'], info['target_lun'])


def _errors(path):
    with open(path, errors='replace') as f:
        return [line for line in f if ' ERROR ' in line]


def test_cli_then_ctrl_c_leaves_nothing_behind(site, tmp_path):
    work = tmp_path / 'work'
    launcher = Launcher(site, tmp_path / 'launcher.out',
                        '--work-dir', str(work))
    session = None
    try:
        export = launcher.wait_for_output(r'^\s*(export .*)$', 300).group(1)
        out = launcher.output
        assert 'Press Ctrl-C' in out
        # The patch step ran and found the copy already patched.
        assert re.search(r'^patch: 0005-\S+ +already applied$', out, re.M)
        control = int(re.search(r'^tgtd: control port (\d+), portal '
                                r'127\.0\.0\.1:(\d+)$', out, re.M).group(1))
        mountpoint = str(work / 'mnt')
        assert sandbox.is_mounted(mountpoint)
        assert sandbox.is_fuse(mountpoint)
        with open(work / 'cinderrc') as f:
            assert f.read().strip() == export.strip()
        env = _cli_env(export)

        res = _cinder(env, 'create', '1', '--name', 'aio-1')
        vol = re.search(r'^\| id +\| (\S+) ', res, re.M).group(1)
        _wait_status(env, vol, 'available')
        backing = work / 'backing' / 'volumes' / ('volume-%s' % vol)
        assert backing.stat().st_size == 1 << 30
        assert backing.stat().st_blocks == 0        # sparse

        [info] = json.loads(_cinder(env, 'export', '--json', 'aio-1'))
        assert info['target_portal'].startswith('127.0.0.1:')
        assert info['target_iqn'] in sandbox.list_targets(control)
        res = subprocess.run(
            ['qemu-io', '-f', 'raw', '-c', 'write -P 0x6b 2M 1M', '-c',
             'read -P 0x6b 2M 1M', _iscsi_url(info)],
            capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert 'verification failed' not in res.stdout
        with open(backing, 'rb') as f:
            f.seek(2 * MiB)
            assert f.read(MiB) == b'\x6b' * MiB

        _cinder(env, 'delete-export', 'aio-1')
        _wait_status(env, vol, 'available')
        assert info['target_iqn'] not in sandbox.list_targets(control)

        # Snapshots run fuse-cinder-files, which the launcher finds next
        # to its Python although its bin directory is not on our PATH.
        res = _cinder(env, 'snapshot-create', '--name', 'aio-snap', 'aio-1')
        snap = re.search(r'^\| id +\| (\S+) ', res, re.M).group(1)
        _wait_status(env, snap, 'available', what='snapshot-show')
        snap_file = work / 'backing' / 'volumes' / ('snapshot-%s' % snap)
        with open(snap_file, 'rb') as f:
            f.seek(2 * MiB)
            assert f.read(MiB) == b'\x6b' * MiB
        assert snap_file.stat().st_blocks * 512 < 4 * MiB
        _cinder(env, 'snapshot-delete', 'aio-snap')
        assert sandbox.wait_for(
            lambda: _show(env, snap, 'snapshot-show') is None, 120, 0.5)
        assert not snap_file.exists()
        _cinder(env, 'delete', 'aio-1')
        assert sandbox.wait_for(lambda: _show(env, vol) is None, 120, 0.5)
        assert not backing.exists()

        # Stop with an exported volume and a logged-in initiator: Ctrl-C
        # must still remove the target and unmount.
        _cinder(env, 'create', '1', '--name', 'aio-2')
        res = _cinder(env, 'show', 'aio-2')
        vol2 = re.search(r'^\| id +\| (\S+) ', res, re.M).group(1)
        _wait_status(env, vol2, 'available')
        [info] = json.loads(_cinder(env, 'export', '--json', 'aio-2'))
        session = subprocess.Popen(
            ['qemu-io', '-f', 'raw', _iscsi_url(info)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        assert sandbox.wait_for(
            lambda: 'Connection:' in sandbox.tgtadm(
                control, '--lld', 'iscsi', '--mode', 'target', '--op',
                'show').stdout, 60), 'qemu-io did not log in'

        tree = {pid: _start_time(pid)
                for pid in sandbox.descendants(launcher.proc.pid)}
        assert len(tree) >= 3      # tgtd, bindfs, the Cinder services
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.wait(120) == 0, launcher.output
    finally:
        if session is not None:
            session.kill()
            session.wait(timeout=30)
        launcher.kill()

    out = launcher.output
    assert 'stopped: no targets, mounts or processes left' in out, out
    assert not sandbox.tgtd_answers(control)
    assert not sandbox.is_mounted(mountpoint)
    alive = [pid for pid, start in tree.items()
             if start is not None and _start_time(pid) == start]
    assert alive == []
    # The work dir was named, so it stays, with the volume still there.
    assert (work / 'backing' / 'volumes' / ('volume-%s' % vol2)).exists()
    assert _errors(work / 'cinder' / 'cinder.log') == []
    # Cinder's database kept its write-ahead log (no fsync per commit)
    # and still knows the volume left behind.
    db = sqlite3.connect('file:%s?mode=ro' % (work / 'cinder' /
                                              'cinder.sqlite'), uri=True)
    try:
        assert db.execute('PRAGMA journal_mode').fetchone() == ('wal',)
        assert db.execute('SELECT display_name FROM volumes WHERE id = ?',
                          (vol2,)).fetchone() == ('aio-2',)
    finally:
        db.close()


def test_self_check_on_an_existing_fuse_mount(site, tmp_path):
    with sandbox.BindfsMount(tmp_path / 'backing', tmp_path / 'mnt') as mnt:
        home = os.path.join(mnt.mountpoint, 'vols')
        code, out, _launcher = run_to_end(site, tmp_path, 300,
                                          '--volumes-home', home,
                                          '--self-check')
        assert code == 0, out
        assert 'self-check passed' in out
        # The snapshot and the clone are timed and hold the data.
        assert re.search(r'^self-check: snapshot \S+ took [0-9.]+ s$', out,
                         re.M), out
        assert re.search(r'^self-check: clone \S+ took [0-9.]+ s$', out,
                         re.M), out
        assert 'self-check: the snapshot and the clone hold the data' in out
        assert 'stopped: no targets, mounts or processes left' in out
        control = int(re.search(r'^tgtd: control port (\d+)', out,
                                re.M).group(1))
        assert not sandbox.tgtd_answers(control)
        # Somebody else's mount is left mounted, and empty again.
        assert sandbox.is_mounted(mnt.mountpoint)
        assert os.listdir(home) == []
        # The default work dir is a temporary one, removed at the end.
        work = re.search(r'^work dir: (\S+)$', out, re.M).group(1)
        assert work.startswith('/var/tmp/fuse-cinder-aio-')
        assert not os.path.exists(work)


def test_refuses_a_volumes_home_off_fuse(site, tmp_path):
    code, out, _launcher = run_to_end(site, tmp_path, 120,
                                      '--work-dir', str(tmp_path / 'work'),
                                      '--volumes-home', str(tmp_path))
    assert code == 1
    assert 'is not on a FUSE mount' in out
    assert 'tgtd:' not in out       # refused before starting anything
    assert 'stopped: no targets, mounts or processes left' in out


@pytest.mark.skipif(
    bool(sandbox.missing_programs('sudo', 'visudo', 'useradd', 'userdel')),
    reason='sudo or useradd missing (bindep.txt)')
def test_self_check_unprivileged_leaves_no_user(site, tmp_path):
    etc_before = set(glob.glob('/etc/fuse-cinder-aio-*'))
    sudoers_before = set(os.listdir('/etc/sudoers.d'))
    launcher = Launcher(site, tmp_path / 'launcher.out', '--unprivileged',
                        '--self-check')
    uids = {}
    try:
        def services_uid():
            # The services process, seen while it runs.
            for pid in sandbox.descendants(launcher.proc.pid):
                try:
                    with open('/proc/%d/cmdline' % pid, 'rb') as f:
                        cmd = f.read().split(b'\0')
                except OSError:
                    continue
                if b'fuse_cinder.allinone' in cmd and b'--use-config' in cmd:
                    found = sandbox.proc_uids(pid)
                    if found:
                        uids[pid] = found
            return launcher.proc.poll() is not None
        sandbox.wait_for(services_uid, 400, interval=0.5)
        code = launcher.wait(60)
    finally:
        launcher.kill()
    out = launcher.output
    if 'an unprivileged user cannot' in out:
        pytest.skip(re.search(r'^ERROR: (.*)$', out, re.M).group(1))
    assert code == 0, out
    assert 'self-check passed' in out
    assert 'stopped: no targets, mounts or processes left' in out
    user, uid = re.search(r'^cinder: services run as (\S+), uid (\d+); root '
                          r'only through sudo cinder-rootwrap '
                          r'/etc/fuse-cinder-aio-\S+/rootwrap\.conf$',
                          out, re.M).groups()
    assert int(uid) != 0
    assert uids and all(real == eff == int(uid)
                        for real, eff in uids.values()), uids
    assert re.search(r'^cinder: unprivileged, as user %s \(rootwrap filters '
                     r'%s, ' % (re.escape(user),
                                re.escape(sandbox.FILTERS_PATH)), out, re.M)
    # Everything went through the root helper, tgt's privsep daemon too.
    helped, daemons = map(int, re.search(
        r'^root helper: (\d+) commands through sudo cinder-rootwrap, '
        r'(\d+) of them privsep daemons$', out, re.M).groups())
    assert helped >= 3 and daemons >= 1, out
    # Nothing of the user is left.
    assert not sandbox.user_exists(user)
    assert set(os.listdir('/etc/sudoers.d')) == sudoers_before
    assert set(glob.glob('/etc/fuse-cinder-aio-*')) == etc_before
    work = re.search(r'^work dir: (\S+)$', out, re.M).group(1)
    assert not os.path.exists(work)


def _left_running(text, session=None):
    """Live processes whose command line holds ``text`` or of ``session``."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        fields = sandbox.proc_stat(pid)
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    errors='replace')
        except OSError:
            continue
        if fields is not None and (int(fields[3]) == session or
                                   text in cmdline):
            found.append('%s %s' % (pid, cmdline))
    return found


def test_refuses_keystone_before_starting_anything(site, tmp_path):
    """Its readiness probe speaks noauth: say so instead of hanging."""
    extra = tmp_path / 'keystone.conf'
    extra.write_text('[DEFAULT]\nauth_strategy = keystone\n')
    work = tmp_path / 'work'
    code, out, launcher = run_to_end(site, tmp_path, 120, '--work-dir',
                                     str(work), '--config-file', str(extra))
    assert code == 1, out
    [error] = [line for line in out.splitlines() if 'ERROR' in line]
    assert error.startswith('ERROR: [DEFAULT] auth_strategy = keystone '
                            '(set in %s) is not supported: the all-in-one '
                            'runs Cinder with auth_strategy = noauth'
                            % extra), out
    assert 'tgtd:' not in out and 'patch:' not in out, out
    assert 'stopped: no targets, mounts or processes left' in out
    assert not (work / 'tgtd.log').exists()
    assert not any(p.startswith(str(work)) for p, _fs in sandbox.mounts())
    assert _left_running(str(work), session=launcher.proc.pid) == []

    # The services alone (what the launcher runs as its child): exit 2,
    # before the database or the log exist.
    state = tmp_path / 'state'
    res = subprocess.run(
        [sys.executable, '-m', 'fuse_cinder.allinone', '--state-dir',
         str(state), '--config-file', str(extra)], capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=patched_cinder.pythonpath(site)))
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'auth_strategy = keystone' in res.stderr
    assert 'runs Cinder with auth_strategy = noauth' in res.stderr
    assert sorted(os.listdir(state)) == ['cinder.conf', 'coordination',
                                         'locks', 'targets']
    assert _left_running(str(state)) == []
