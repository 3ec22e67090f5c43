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
"""os-export / os-delete-export on a live, patched Cinder, driven by the CLI.

The real Cinder API, scheduler and volume service run in one process
(``fuse_cinder.allinone``: fake transport, SQLite, noauth, API on a
loopback port) with a patched copy of the installed Cinder first on its
path; the real ``cinder`` command, extended by fuse_cinderclient_ext,
talks to it.  The API flow is checked with Cinder's logging fake driver,
the iSCSI data path with the real driver on a bindfs mount behind a
private tgtd, logging in with qemu's iSCSI initiator.

Ports: API 18776-18779, tgtd control 31-39, iSCSI portal 13271-13279,
all on 127.0.0.1; everything started here is stopped here.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from fuse_cinder.allinone import api_client
from fuse_cinder.allinone import sandbox
from tests.functional import patched_cinder
from tests.functional import tgtd as tgtd_helper

API_PORTS = range(18776, 18780)
CONTROL_PORTS = range(31, 40)
PORTAL_PORTS = range(13271, 13280)
# Cinder's logging fake driver with the os-export capabilities, and a log
# of what the backend was asked to do (tests/functional/export_test_driver).
FAKE_DRIVER = 'tests.functional.export_test_driver.ExportTestDriver'
REAL_DRIVER = 'fuse_cinder.driver.FuseISCSIDriver'
MiB = 1 << 20

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root'),
    patched_cinder.needs_cinder_cli,
]


def _free_port(ports):
    port = sandbox.free_port(ports)
    if port is None:
        pytest.skip('no free port in %s-%s' % (ports[0], ports[-1]))
    return port


def _wait(predicate, timeout, what, interval=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError('timed out after %ss waiting for %s'
                         % (timeout, what))


class AllInOne(object):
    """fuse_cinder.allinone running the patched Cinder, always stopped."""

    def __init__(self, site, state_dir, driver, backend_options=(),
                 extra_conf=None, port=None):
        self.site = site
        self.state_dir = str(state_dir)
        self.driver = driver
        self.backend_options = list(backend_options)
        self.extra_conf = extra_conf
        self.port = port or _free_port(API_PORTS)
        self.url = 'http://127.0.0.1:%d/v3' % self.port
        self.proc = None

    @property
    def log(self):
        return os.path.join(self.state_dir, 'cinder.log')

    def log_tail(self, lines=60):
        try:
            with open(self.log) as f:
                return ''.join(f.readlines()[-lines:])
        except OSError:
            return '(no log)'

    def start(self, timeout=120):
        if not sandbox.tcp_port_free(self.port):
            raise RuntimeError('port %d is busy' % self.port)
        cmd = [sys.executable, '-m', 'fuse_cinder.allinone',
               '--state-dir', self.state_dir, '--api-port', str(self.port),
               '--volume-driver', self.driver]
        for opt in self.backend_options:
            cmd += ['--backend-option', opt]
        if self.extra_conf:
            cmd += ['--config-file', self.extra_conf]
        os.makedirs(self.state_dir, exist_ok=True)
        out = open(os.path.join(self.state_dir, 'stdout.log'), 'ab')
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ,
                     PYTHONPATH=patched_cinder.pythonpath(self.site)))
        out.close()
        try:
            _wait(self._volume_service_up, timeout, 'cinder-volume up')
        except AssertionError:
            self.stop()
            raise AssertionError('all-in-one Cinder did not come up:\n' +
                                 self.log_tail())
        return self

    def _volume_service_up(self):
        if self.proc.poll() is not None:
            raise AssertionError('all-in-one Cinder exited with %s:\n%s'
                                 % (self.proc.returncode, self.log_tail()))
        try:
            # backend_state (3.49) comes from the capabilities the volume
            # service publishes at the end of init_host, so unlike 'state'
            # it cannot be a heartbeat left by a previous run.
            status, body = self.http('GET', '/os-services',
                                     microversion='3.49')
        except OSError:
            return False
        return status == 200 and any(
            s['binary'] == 'cinder-volume' and s['state'] == 'up' and
            s.get('backend_state') == 'up' for s in body['services'])

    def kill(self):
        """Stop every service at once, as a crash or power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def driver_actions(self, vol_id=None):
        """What ExportTestDriver was asked to do, oldest first."""
        try:
            with open(os.path.join(self.state_dir,
                                   'driver-actions.log')) as f:
                entries = [json.loads(line) for line in f]
        except OSError:
            return []
        return [e for e in entries
                if vol_id is None or e['volume_id'] == vol_id]

    def delay(self, action, seconds):
        """Make ExportTestDriver's next action sleep first."""
        with open(os.path.join(self.state_dir, 'delay-' + action),
                  'w') as f:
            f.write(str(seconds))

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    # -- clients ---------------------------------------------------------

    def http(self, method, path, body=None, user='admin', project='admin',
             microversion='3.0', timeout=60):
        return api_client.Api(self.url, user, project).call(
            method, path, body, microversion=microversion, timeout=timeout)

    def action(self, vol_id, body, **kw):
        return self.http('POST', '/volumes/%s/action' % vol_id, body, **kw)

    def cli(self, *args, user='admin', project='admin', check=True):
        cmd = [patched_cinder.CINDER_CLI, '--os-auth-type', 'noauth',
               '--os-endpoint', self.url, '--os-user-id', user,
               '--os-project-id', project,
               '--os-volume-api-version', '3.0'] + list(args)
        # The repository on the path is what makes the export commands
        # appear: the client is not patched.
        res = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=180,
                             env=dict(os.environ,
                                      PYTHONPATH=patched_cinder.REPO))
        if check and res.returncode != 0:
            raise AssertionError('%s failed (%d):\n%s%s\n%s' % (
                ' '.join(args), res.returncode, res.stdout, res.stderr,
                self.log_tail(30)))
        return res

    def status(self, vol_id, kind='volume'):
        """Status of a volume or a snapshot (``kind``), None once gone."""
        code, body = self.http('GET', '/%ss/%s' % (kind, vol_id))
        if code == 404:
            return None
        assert code == 200, body
        return body[kind]['status']

    def wait_status(self, vol_id, wanted, timeout=60, kind='volume'):
        def check():
            status = self.status(vol_id, kind)
            if status in ('error', 'error_deleting') and status != wanted:
                raise AssertionError('%s %s went %s:\n%s'
                                     % (kind, vol_id, status,
                                        self.log_tail()))
            return status == wanted
        _wait(check, timeout, '%s %s %s' % (kind, vol_id, wanted))

    def wait_gone(self, vol_id, kind='volume', timeout=60):
        _wait(lambda: self.status(vol_id, kind) is None, timeout,
              '%s %s gone' % (kind, vol_id))

    def create(self, name, size=1, *options):
        vol_id = table_field(self.cli('create', str(size), '--name', name,
                                      *options).stdout, 'id')
        self.wait_status(vol_id, 'available')
        return vol_id

    def delete(self, vol_id):
        self.cli('delete', vol_id)
        self.wait_gone(vol_id)


def table_field(stdout, field):
    """A value of the property table the cinder command prints."""
    return [line.split('|')[2].strip() for line in stdout.splitlines()
            if line.startswith('| %s ' % field)][0]


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    return patched_cinder.patched_copy(tmp_path_factory.mktemp('cinder'))


# -- the API flow, with Cinder's fake driver ----------------------------

POLICY = '''
# Only the user "admin" may export: noauth makes every user an admin, so
# this is the one way to see a caller without the right.
"volume_extension:volume_actions:export": "user_id:admin"
"volume_extension:volume_actions:delete_export": "user_id:admin"
'''


def _test_driver_cinder(site, state, extra_conf):
    """An all-in-one on the export test driver with ``extra_conf``."""
    extra = state / 'extra.conf'
    extra.write_text(extra_conf)
    aio = AllInOne(site, state / 'state', FAKE_DRIVER,
                   extra_conf=str(extra))
    aio.start()
    yield aio
    aio.stop()


@pytest.fixture(scope='module')
def fake_cinder(site, tmp_path_factory):
    state = tmp_path_factory.mktemp('aio-fake')
    policy = state / 'policy.yaml'
    policy.write_text(POLICY)
    yield from _test_driver_cinder(
        site, state, '[oslo_policy]\npolicy_file = %s\n' % policy)


def test_export_and_delete_export_with_the_cli(fake_cinder):
    aio = fake_cinder
    v1 = aio.create('cli-1')
    v2 = aio.create('cli-2')

    res = aio.cli('export', 'cli-1')
    assert 'driver_volume_type' in res.stdout and 'iscsi' in res.stdout
    assert aio.status(v1) == 'exported'

    # Several volumes: one error each, the connection information of those
    # exported, and a failure because some were not.
    res = aio.cli('export', '--json', 'cli-1', 'cli-2', 'no-such-volume',
                  check=False)
    assert res.returncode != 0
    assert 'Unable to export 2 of the 3 specified volumes' in res.stderr
    rows = json.loads(res.stdout)
    assert [r['volume_id'] for r in rows] == [v2]
    assert 'Export of volume cli-1 failed' in res.stderr
    assert 'status is exported' in res.stderr
    assert "Export of volume no-such-volume failed" in res.stderr
    assert aio.status(v2) == 'exported'

    # All fail: non-zero exit, nothing changes.
    res = aio.cli('export', 'cli-1', 'cli-2', check=False)
    assert res.returncode != 0
    assert 'Unable to export any of the specified volumes' in res.stderr
    assert aio.status(v1) == aio.status(v2) == 'exported'

    res = aio.cli('delete-export', 'cli-1', 'cli-2')
    assert 'Export of volume %s removed.' % v1 in res.stdout
    assert 'Export of volume %s removed.' % v2 in res.stdout
    assert aio.status(v1) == aio.status(v2) == 'available'

    res = aio.cli('delete-export', 'cli-1', check=False)
    assert res.returncode != 0
    assert 'must be exported or error_exporting' in res.stderr
    assert aio.status(v1) == 'available'

    aio.delete(v1)
    aio.delete(v2)


def test_help_lists_the_commands(fake_cinder):
    res = fake_cinder.cli('help')
    assert ' export ' in res.stdout and ' delete-export ' in res.stdout


@pytest.fixture
def exported(fake_cinder):
    vol_id = fake_cinder.create('bad-%s' % uuid.uuid4().hex[:6])
    code, body = fake_cinder.action(vol_id, {'os-export': None})
    # Synchronous, with a body: 200 like os-initialize_connection.
    assert code == 200, body
    assert body['connection_info']['driver_volume_type'] == 'iscsi'
    assert fake_cinder.status(vol_id) == 'exported'
    yield vol_id
    if fake_cinder.status(vol_id) is not None:
        fake_cinder.cli('reset-state', '--state', 'available', vol_id)
        fake_cinder.delete(vol_id)


@pytest.mark.parametrize('body', [
    {'os-export': {'force': True}},
    {'os-export': 'now'},
    {'os-export': []},
    {'os-export': {}, 'extra': 1},
])
def test_malformed_export_is_400_and_changes_nothing(fake_cinder, body):
    vol_id = fake_cinder.create('malformed')
    code, reply = fake_cinder.action(vol_id, body)
    assert code == 400, reply
    assert fake_cinder.status(vol_id) == 'available'
    fake_cinder.delete(vol_id)


def test_malformed_delete_export_is_400(fake_cinder, exported):
    code, reply = fake_cinder.action(exported,
                                     {'os-delete-export': {'x': 1}})
    assert code == 400, reply
    assert 'Additional properties are not allowed' in json.dumps(reply)
    assert fake_cinder.status(exported) == 'exported'


def test_unknown_volume_is_404(fake_cinder):
    for action in ('os-export', 'os-delete-export'):
        code, _reply = fake_cinder.action(str(uuid.uuid4()), {action: {}})
        assert code == 404


def test_wrong_status_is_400_and_changes_nothing(fake_cinder, exported):
    code, reply = fake_cinder.action(exported, {'os-export': {}})
    assert code == 400
    assert 'must be available' in reply['badRequest']['message']
    assert fake_cinder.status(exported) == 'exported'

    vol_id = fake_cinder.create('not-exported')
    code, reply = fake_cinder.action(vol_id, {'os-delete-export': {}})
    assert code == 400
    assert 'must be exported or error_exporting' in (
        reply['badRequest']['message'])
    assert fake_cinder.status(vol_id) == 'available'
    fake_cinder.delete(vol_id)


def test_caller_without_the_right_is_403(fake_cinder, exported):
    code, _r = fake_cinder.action(exported, {'os-delete-export': {}},
                                  user='demo')
    assert code == 403
    assert fake_cinder.status(exported) == 'exported'

    vol_id = fake_cinder.create('policy')
    res = fake_cinder.cli('export', vol_id, user='demo', check=False)
    assert res.returncode != 0
    assert 'HTTP 403' in res.stderr
    assert fake_cinder.status(vol_id) == 'available'
    fake_cinder.delete(vol_id)


def test_attach_detach_and_delete_leave_an_export_alone(fake_cinder,
                                                        exported):
    aio = fake_cinder
    code, _r = aio.action(exported, {'os-attach': {
        'mountpoint': '/dev/vdb', 'host_name': 'elsewhere'}})
    assert code == 400
    code, _r = aio.action(exported, {'os-detach': {}})
    assert code == 400
    code, _r = aio.action(exported, {'os-force_detach': {}})
    assert code == 400
    # With an attachment id too: os-force_detach terminates the
    # connection first, and that is refused on an exported volume (it
    # was a 409 from Cinder's attachment check before issue 12).
    code, reply = aio.action(exported, {'os-force_detach': {
        'attachment_id': str(uuid.uuid4())}})
    assert code == 400, reply
    assert 'os-delete-export' in json.dumps(reply)
    code, _r = aio.action(exported, {'os-reserve': None})
    assert code == 400
    res = aio.cli('delete', exported, check=False)
    assert 'must not be migrating' in res.stdout + res.stderr
    assert aio.status(exported) == 'exported'

    # Connections change the target's ACL, which would lock out the
    # outside host: refused, and the backend is not asked.
    before = aio.driver_actions(exported)
    connector = {'initiator': 'iqn.1993-08.org.debian:01:nova',
                 'host': 'compute1', 'ip': '127.0.0.1'}
    code, reply = aio.action(exported, {'os-initialize_connection': {
        'connector': connector}})
    assert code == 400, reply
    assert 'no connection to it can be initialized' in json.dumps(reply)
    code, reply = aio.action(exported, {'os-terminate_connection': {
        'connector': connector}})
    assert code == 400, reply
    assert 'cannot be terminated' in json.dumps(reply)
    assert aio.driver_actions(exported) == before
    assert aio.status(exported) == 'exported'


def test_admin_recovers_from_error_exporting(fake_cinder, exported):
    aio = fake_cinder
    aio.cli('reset-state', '--state', 'error_exporting', exported)
    assert aio.status(exported) == 'error_exporting'
    # From error_exporting the owner can clean up with delete-export.
    aio.cli('delete-export', exported)
    assert aio.status(exported) == 'available'
    # And an admin may also force the status anywhere, e.g. back.
    aio.cli('reset-state', '--state', 'exported', exported)
    assert aio.status(exported) == 'exported'


# -- timeouts, restarts and late messages (issue 12) --------------------

RPC_TIMEOUT = 3


@pytest.fixture(scope='module')
def slow_cinder(site, tmp_path_factory):
    """The export test driver, default policy, short RPC timeout."""
    yield from _test_driver_cinder(
        site, tmp_path_factory.mktemp('aio-slow'),
        '[DEFAULT]\nrpc_response_timeout = %d\n' % RPC_TIMEOUT)


def _actions(aio, vol_id, since=0):
    return [e['action'] for e in aio.driver_actions(vol_id)
            if e['time'] >= since]


def _worker(aio, vol_id):
    import sqlite3
    db = sqlite3.connect(os.path.join(aio.state_dir, 'cinder.sqlite'))
    try:
        return db.execute('SELECT status, service_id FROM workers WHERE '
                          'resource_id = ? AND deleted = 0',
                          (vol_id,)).fetchone()
    finally:
        db.close()


def test_timed_out_export_is_recovered_by_its_owner(slow_cinder):
    aio = slow_cinder
    vol_id = aio.create('timeout-1')
    aio.delay('create_export', RPC_TIMEOUT + 4)
    code, reply = aio.action(vol_id, {'os-export': {}}, timeout=60)
    # Not a 500 that leaves "exporting" behind: the API says what
    # happened and leaves a status the owner can act on.
    assert code == 504, reply
    assert 'os-delete-export' in json.dumps(reply)
    assert aio.status(vol_id) == 'error_exporting'

    # The volume service finishes later; nobody got the credentials, so
    # it takes its target down again and leaves the status alone.
    _wait(lambda: 'remove_export' in _actions(aio, vol_id), 30,
          'the late export removing its target')
    assert _actions(aio, vol_id) == ['create_export',
                                     'initialize_connection',
                                     'remove_export']
    assert aio.status(vol_id) == 'error_exporting'

    # The owner recovers with delete-export, no reset-state.
    aio.cli('delete-export', vol_id)
    assert aio.status(vol_id) == 'available'
    code, reply = aio.action(vol_id, {'os-export': {}})
    assert code == 200, reply
    aio.cli('delete-export', vol_id)
    aio.delete(vol_id)


def test_late_export_message_touches_nothing(slow_cinder):
    """Timeout, the volume moves on (attach), then the queued call."""
    aio = slow_cinder
    vol_id = aio.create('late-1')
    late = RPC_TIMEOUT + 8
    aio.delay('claim', late)
    start = time.time()
    code, reply = aio.action(vol_id, {'os-export': {}}, timeout=60)
    assert code == 504, reply
    aio.cli('delete-export', vol_id)
    assert aio.status(vol_id) == 'available'

    # "Nova" attaches the volume meanwhile: a target of its own.
    connector = {'initiator': 'iqn.1993-08.org.debian:01:nova',
                 'host': 'compute1', 'ip': '127.0.0.1'}
    code, reply = aio.action(vol_id, {'os-reserve': None})
    assert code == 202, reply
    code, reply = aio.action(vol_id, {'os-initialize_connection': {
        'connector': connector}})
    assert code == 200, reply
    code, reply = aio.action(vol_id, {'os-attach': {
        'mountpoint': '/dev/vdb', 'host_name': 'compute1'}})
    assert code == 202, reply
    aio.wait_status(vol_id, 'in-use')
    attached = _actions(aio, vol_id)

    # The export message arrives now: it must find the volume in-use
    # and leave the backend alone.
    _wait(lambda: 'Ignoring a stale os-export request' in aio.log_tail(400),
          late + 30, 'the late export to be refused')
    assert time.time() - start >= late
    assert _actions(aio, vol_id) == attached
    assert aio.status(vol_id) == 'in-use'

    code, reply = aio.action(vol_id, {'os-detach': {}})
    assert code == 202, reply
    aio.wait_status(vol_id, 'available')
    aio.delete(vol_id)


def test_volume_service_stopped_during_export(slow_cinder):
    """Stop the services in an os-export, recover as the volume's owner."""
    import threading

    aio = slow_cinder
    vol_id = aio.create('stop-1')
    aio.delay('create_export', 120)
    answers = []
    caller = threading.Thread(target=lambda: answers.append(
        _try_action(aio, vol_id, {'os-export': {}})))
    caller.start()
    # The volume service took the request: its worker entry says so.
    _wait(lambda: _worker(aio, vol_id), 30, 'the export to be running')
    assert _worker(aio, vol_id)[0] == 'exporting'
    assert aio.status(vol_id) == 'exporting'

    aio.kill()
    caller.join(60)
    assert answers and answers[0] is None   # no answer, no credentials
    aio.start()
    # The restarted service rolled back its own interrupted request.
    aio.wait_status(vol_id, 'available', timeout=60)
    assert _worker(aio, vol_id) is None
    assert _actions(aio, vol_id)[-1] == 'remove_export'

    # A request whose API died before any volume service took it leaves
    # "exporting" with no worker: its owner can still recover.
    aio.cli('reset-state', '--state', 'exporting', vol_id)
    aio.cli('delete-export', vol_id)
    assert aio.status(vol_id) == 'available'
    code, reply = aio.action(vol_id, {'os-export': {}})
    assert code == 200, reply
    aio.cli('delete-export', vol_id)
    aio.delete(vol_id)


def _try_action(aio, vol_id, body):
    try:
        return aio.action(vol_id, body, timeout=120)
    except OSError:
        return None


def test_read_only_volume_is_exported_read_only(slow_cinder):
    aio = slow_cinder
    vol_id = aio.create('ro-1')
    aio.cli('readonly-mode-update', vol_id, 'True')
    [info] = json.loads(aio.cli('export', '--json', vol_id).stdout)
    assert info['access_mode'] == 'ro'
    # _parse_connection_options ran: the flags Nova would get too.
    assert info['encrypted'] is False and 'qos_specs' in info
    [create] = [e for e in aio.driver_actions(vol_id)
                if e['action'] == 'create_export']
    assert create['access_mode'] == 'ro'
    aio.cli('delete-export', vol_id)

    aio.cli('readonly-mode-update', vol_id, 'False')
    [info] = json.loads(aio.cli('export', '--json', vol_id).stdout)
    assert info['access_mode'] == 'rw'
    aio.cli('delete-export', vol_id)
    aio.delete(vol_id)


def test_exported_volume_is_extended_online(slow_cinder):
    aio = slow_cinder
    vol_id = aio.create('extend-1')
    aio.cli('export', vol_id)
    aio.cli('extend', vol_id, '2')
    _wait(lambda: aio.http('GET', '/volumes/%s' % vol_id)[1]['volume'][
        'size'] == 2, 60, 'the volume to grow')
    assert aio.status(vol_id) == 'exported'
    assert 'extend_volume' in _actions(aio, vol_id)
    assert 'remove_export' not in _actions(aio, vol_id)
    aio.cli('delete-export', vol_id)
    aio.delete(vol_id)


def test_patched_code_paths(site):
    """Unit checks of the patched code (RPC pin, rollbacks, init_host)."""
    module = os.path.join(os.path.dirname(__file__),
                          'export_logic_patched.py')
    res = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore::DeprecationWarning', module],
        capture_output=True, text=True, timeout=600, cwd=patched_cinder.REPO,
        env=dict(os.environ, PYTHONPATH=patched_cinder.pythonpath(site)))
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert ' passed' in res.stdout and 'failed' not in res.stdout


# -- the data path, with the real driver and tgtd -----------------------

def _real_driver_missing():
    try:
        import fuse_cinder.driver  # noqa: F401
        import fuse_cinder.targets.tgt  # noqa: F401
    except Exception as e:
        return 'fuse_cinder driver not importable: %s' % e
    missing = [b for b in ('tgtd', 'tgtadm', 'tgt-admin', 'bindfs',
                           'qemu-io') if shutil.which(b) is None]
    if missing:
        return 'not installed: %s' % ', '.join(missing)
    return None


class Tgtd(tgtd_helper.Tgtd):
    """The shared private tgtd helper, on this suite's own ports."""

    control_ports = CONTROL_PORTS
    portal_ports = PORTAL_PORTS


def _qemu_io(info, *commands, password=None):
    url = 'iscsi://%s%%%s@%s/%s/%s' % (
        info['auth_username'], password or info['auth_password'],
        info['target_portal'], info['target_iqn'], info['target_lun'])
    cmd = ['qemu-io', '-f', 'raw']
    for c in commands:
        cmd += ['-c', c]
    return subprocess.run(cmd + [url], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def real_cinder(site, tmp_path):
    missing = _real_driver_missing()
    if missing:
        pytest.skip(missing)
    with sandbox.ScratchMount(tmp_path / 'fuse') as mount:
        tgtd = Tgtd(log_path=str(tmp_path / 'tgtd.log')).start()
        os.makedirs(mount.volumes_home, exist_ok=True)
        aio = AllInOne(site, tmp_path / 'state', REAL_DRIVER, [
            'volumes_home=%s' % mount.volumes_home,
            'fuse_tgt_control_port=%d' % tgtd.control_port,
            'target_port=%d' % tgtd.portal_port,
            'target_ip_address=127.0.0.1',
        ])
        try:
            aio.start()
            yield aio, tgtd, mount
        finally:
            aio.stop()
            tgtd.stop()


def _backing_file(mount, vol_id):
    found = glob.glob(os.path.join(mount.backing, 'volumes',
                                   '*%s*' % vol_id))
    return found[0] if found else None


def test_export_login_read_write_and_delete(real_cinder):
    aio, tgtd, mount = real_cinder
    vol_id = aio.create('iscsi-1')
    backing = _backing_file(mount, vol_id)
    assert backing is not None

    res = aio.cli('export', '--json', 'iscsi-1')
    [info] = json.loads(res.stdout)
    assert info['driver_volume_type'] == 'iscsi'
    assert info['target_portal'] == tgtd.portal
    assert info['auth_method'] == 'CHAP'
    assert info['auth_username'] and info['auth_password']
    assert info['target_iqn'] in tgtd.targets()
    assert aio.status(vol_id) == 'exported'

    # Log in with the returned CHAP credentials; write, then read back.
    res = _qemu_io(info, 'write -P 0x5a 1M 1M', 'read -P 0x5a 1M 1M')
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'Pattern verification failed' not in res.stdout
    with open(backing, 'rb') as f:
        f.seek(MiB)
        assert f.read(MiB) == b'\x5a' * MiB

    # A wrong secret is refused.
    res = _qemu_io(info, 'read 0 512', password='wrong-secret')
    assert res.returncode != 0 or 'failed' in (res.stdout + res.stderr)

    aio.cli('delete-export', 'iscsi-1')
    assert aio.status(vol_id) == 'available'
    assert info['target_iqn'] not in tgtd.targets()
    res = _qemu_io(info, 'read 0 512')
    assert res.returncode != 0 or 'failed' in (res.stdout + res.stderr)

    aio.delete(vol_id)
    assert _backing_file(mount, vol_id) is None


def test_export_survives_a_volume_service_restart(real_cinder, tmp_path):
    aio, tgtd, mount = real_cinder
    vol_id = aio.create('restart-1')
    [info] = json.loads(aio.cli('export', '--json', vol_id).stdout)

    # Stop Cinder and lose every target, as after a host reboot.
    aio.stop()
    tgtd.restart()
    assert info['target_iqn'] not in tgtd.targets()

    aio.start()
    # init_host re-created the target of the exported volume.
    assert aio.status(vol_id) == 'exported'
    assert info['target_iqn'] in tgtd.targets()
    res = _qemu_io(info, 'write -P 0x33 0 64k', 'read -P 0x33 0 64k')
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'Pattern verification failed' not in res.stdout

    aio.cli('delete-export', vol_id)
    aio.delete(vol_id)


def test_admin_commands_work_in_the_all_in_one(real_cinder):
    """What an operator types first, through the real cinder command.

    get-pools --detail needs the scheduler's answer as a broker would
    carry it (the in-process transport handed over ReadOnlyDicts: 500).
    """
    aio, _tgtd, mount = real_cinder
    pools = aio.cli('get-pools', '--detail').stdout
    assert 'fuse_cinder_export' in pools and 'free_capacity_gb' in pools
    name = re.search(r'\|\s+name\s+\|\s+(\S+)\s+\|', pools).group(1)
    services = aio.cli('service-list').stdout
    assert re.search(r'cinder-volume\s+\|\s+%s' % re.escape(
        name.split('#')[0]), services)
    assert 'cinder-scheduler' in services
    open(os.path.join(mount.volumes_home, 'legacy.img'), 'wb').close()
    host = name.split('#')[0]
    listing = aio.cli('--os-volume-api-version', '3.8', 'manageable-list',
                      host).stdout
    assert 'legacy.img' in listing
    aio.cli('--os-volume-api-version', '3.8', 'snapshot-manageable-list',
            host)
    aio.cli('type-create', 'fuse-admin')
    aio.cli('type-key', 'fuse-admin', 'set', 'volume_backend_name=%s'
            % name.split('@')[1].split('#')[0])
    vol = aio.create('admin-1')
    aio.cli('reset-state', '--state', 'error', vol)
    assert aio.status(vol) == 'error'
    aio.cli('reset-state', '--state', 'available', vol)
    aio.delete(vol)


def _cmp(expected, path):
    res = subprocess.run(['cmp', expected, path], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def _listed(aio, command, host, name):
    """The row of ``name`` in a manageable listing: {column: text}."""
    listing = aio.cli('--os-volume-api-version', '3.8', command, host).stdout
    rows = [[cell.strip() for cell in line.strip().strip('|').split('|')]
            for line in listing.splitlines() if line.startswith('|')]
    found = [dict(zip(rows[0], row)) for row in rows[1:]
             if "'%s'" % name in row[0]]
    assert len(found) == 1, listing
    return found[0]


def test_unmanaged_snapshot_and_volume_are_managed_back(real_cinder,
                                                        tmp_path):
    """Tempest's manage flows, by the names unmanage keeps, with the CLI.

    The snapshot is taken, then its volume changed: what comes back (the
    managed snapshot, a volume made from it, that volume unmanaged and
    managed again) must hold the snapshot's bytes, not the volume's.
    """
    aio, _tgtd, mount = real_cinder
    v38 = ('--os-volume-api-version', '3.8')
    pool = re.search(r'\|\s+name\s+\|\s+(\S+)\s+\|',
                     aio.cli('get-pools').stdout).group(1)
    host = pool.split('#')[0]
    backing = os.path.join(mount.backing, 'volumes')

    def backing_file(name):
        return os.path.join(backing, name)

    src = aio.create('manage-src')
    with open(os.path.join(mount.volumes_home, 'volume-' + src), 'r+b') as f:
        f.seek(5 * MiB)
        f.write(os.urandom(MiB))
    snap = table_field(aio.cli('snapshot-create', '--name', 'manage-snap',
                               src).stdout, 'id')
    aio.wait_status(snap, 'available', kind='snapshot')
    with open(os.path.join(mount.volumes_home, 'volume-' + src), 'r+b') as f:
        f.seek(5 * MiB)
        f.write(b'\xff' * MiB)
    kept = str(tmp_path / 'snapshot-content')
    subprocess.run(['cp', '--sparse=always',
                    backing_file('snapshot-' + snap), kept], check=True)

    aio.cli('snapshot-unmanage', snap)
    aio.wait_gone(snap, 'snapshot')
    _cmp(kept, backing_file('snapshot-' + snap))      # kept, by its name
    row = _listed(aio, 'snapshot-manageable-list', host, 'snapshot-' + snap)
    assert (row['size'], row['safe_to_manage']) == ('1', 'True'), row
    assert "'volume-%s'" % src in row['source_reference'], row

    # The volume's own file is no snapshot: refused, nothing renamed.
    bad = table_field(aio.cli(*v38, 'snapshot-manage', src,
                              'volume-' + src).stdout, 'id')
    aio.wait_status(bad, 'error', kind='snapshot')
    assert os.path.exists(backing_file('volume-' + src))
    aio.cli('snapshot-delete', bad)
    aio.wait_gone(bad, 'snapshot')

    back = table_field(aio.cli(*v38, 'snapshot-manage', '--name',
                               'managed-back', src,
                               'snapshot-' + snap).stdout, 'id')
    aio.wait_status(back, 'available', kind='snapshot')
    # What Tempest's test_unmanage_manage_snapshot checks of it.
    _code, body = aio.http('GET', '/snapshots/%s' % back)
    assert (body['snapshot']['size'], body['snapshot']['volume_id'],
            body['snapshot']['name']) == (1, src, 'managed-back')
    assert not os.path.exists(backing_file('snapshot-' + snap))
    _cmp(kept, backing_file('snapshot-' + back))
    row = _listed(aio, 'snapshot-manageable-list', host, 'snapshot-' + back)
    assert row['safe_to_manage'] == 'False', row

    clone = aio.create('from-managed', 1, '--snapshot-id', back)
    _cmp(kept, backing_file('volume-' + clone))

    # The volume flow: unmanage, listed safe, managed back by its name.
    aio.cli('unmanage', clone)
    aio.wait_gone(clone)
    row = _listed(aio, 'manageable-list', host, 'volume-' + clone)
    assert (row['size'], row['safe_to_manage']) == ('1', 'True'), row
    again = table_field(aio.cli(*v38, 'manage', '--name', 'clone-back',
                                pool, 'volume-' + clone).stdout, 'id')
    aio.wait_status(again, 'available')
    _cmp(kept, backing_file('volume-' + again))

    aio.delete(again)
    aio.cli('snapshot-delete', back)
    aio.wait_gone(back, 'snapshot')
    aio.delete(src)
    assert os.listdir(backing) == []
