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
"""The multi-process deployment of README.rst, started for real.

cinder-api (two workers), cinder-scheduler and cinder-volume run as
separate processes from Cinder's own console scripts, on a private
RabbitMQ and MariaDB from the Debian packages.  cinder-volume serves two
backends (``enabled_backends = fuse1,fuse2``), each on its own bindfs
mount, both behind one private tgtd as on a real host; volume types pick
the backend.  For the host failover test two more cinder-volume services
(hosts fuse-mp-a and fuse-mp-b, a tgtd each) share one more volumes_home.
A patched copy of the installed Cinder is first on the services' path, so
the installed one is left alone.

Ports on 127.0.0.1: API 18780-18789, tgtd control 41-49, portal
13281-13289, MariaDB 13306-13309, RabbitMQ 15672-15677.  Everything is
stopped at the end of the module, also after a failure.
"""

import concurrent.futures
import configparser
import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from fuse_cinder.allinone import api_client
from fuse_cinder.allinone import cinder_conf
from fuse_cinder.allinone import deployment as aio_deployment
from fuse_cinder.allinone import sandbox
from tests.functional import patched_cinder
from tests.functional import services

BIN = os.path.dirname(sys.executable)
CINDER = os.path.join(BIN, 'cinder')
BACKENDS = ('fuse1', 'fuse2')
HOST = 'fuse-mp'
BURST = 50
GiB = 1 << 30
MiB = 1 << 20


def _skip_reason():
    if os.geteuid() != 0:
        return 'needs root'
    for name in ('cinder', 'cinder-api', 'cinder-scheduler', 'cinder-volume',
                 'cinder-manage'):
        if not os.access(os.path.join(BIN, name), os.X_OK):
            return '%s is not installed next to %s' % (name, sys.executable)
    try:
        import pymysql  # noqa: F401
    except ImportError:
        return 'PyMySQL is not installed (test-requirements.txt)'
    lack = sandbox.missing_programs('tgtd', 'tgtadm', 'tgt-admin', 'bindfs',
                                    'qemu-io', 'patch')
    if lack:
        return 'not installed: %s (bindep.txt)' % ', '.join(lack)
    return services.missing()


pytestmark = pytest.mark.skipif(bool(_skip_reason()),
                                reason=_skip_reason() or '')


def write_cinder_conf(path, work, api_port, db_url, transport_url,
                      volumes_homes, tgtd):
    """The cinder.conf of README.rst "Multi-process deployment"."""
    paste = cinder_conf.find_api_paste()
    conf = configparser.ConfigParser(interpolation=None)
    conf['DEFAULT'] = {
        'host': HOST,
        'state_path': os.path.join(work, 'state'),
        'log_dir': os.path.join(work, 'logs'),
        'transport_url': transport_url,
        'auth_strategy': 'noauth',
        'api_paste_config': paste,
        'resource_query_filters_file': os.path.join(
            os.path.dirname(paste), 'resource_filters.json'),
        'osapi_volume_listen': '127.0.0.1',
        'osapi_volume_listen_port': str(api_port),
        'osapi_volume_workers': '2',
        'enabled_backends': ','.join(BACKENDS),
        'graceful_shutdown_timeout': '20',
        # The burst below holds 50 volumes at once; the default is 10.
        'quota_volumes': '-1',
        'quota_gigabytes': '-1',
        'quota_snapshots': '-1',
    }
    conf['database'] = {'connection': db_url}
    conf['oslo_concurrency'] = {'lock_path': os.path.join(work, 'locks')}
    conf['coordination'] = {
        'backend_url': 'file://%s' % os.path.join(work, 'coordination')}
    conf['oslo_messaging_notifications'] = {'driver': 'noop'}
    for name in BACKENDS:
        conf[name] = {
            'volume_driver': 'fuse_cinder.driver.FuseISCSIDriver',
            'volume_backend_name': name,
            'volumes_home': volumes_homes[name],
            # One directory for the host, as etc/tgt/fuse_cinder.conf
            # includes one.
            'volumes_dir': os.path.join(work, 'targets'),
            'target_ip_address': tgtd.ip,
            'target_port': str(tgtd.portal_port),
            'fuse_tgt_control_port': str(tgtd.control_port),
        }
    # The services run as root here, with no sudo rules and no
    # /etc/cinder/rootwrap.conf: the privsep daemon of the driver's tgt
    # calls starts from this venv directly (the all-in-one's does too).
    conf['fuse_cinder_tgt_privileged'] = {
        'helper_command': '%s --config-file %s' % (
            os.path.join(BIN, 'privsep-helper'), path)}
    for sub in ('state', 'logs', 'locks', 'coordination'):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    with open(path, 'w') as f:
        conf.write(f)


class Deployment(object):
    """Handles on everything the module fixture started."""

    def __init__(self, work, site):
        self.work = work
        self.env = dict(os.environ,
                        PYTHONPATH=patched_cinder.pythonpath(site))
        self.conf = os.path.join(work, 'cinder.conf')
        self.procs = {}
        self.mounts = {}
        self.tgtd = None
        self.api = None

    @property
    def logs(self):
        return sorted(glob.glob(os.path.join(self.work, 'logs', '*.log')))

    def log_tail(self, lines=40):
        text = []
        for path in self.logs:
            with open(path, errors='replace') as f:
                text.append('== %s\n%s' % (path,
                                           ''.join(f.readlines()[-lines:])))
        return '\n'.join(text)

    def error_lines(self):
        found = []
        for path in self.logs:
            with open(path, errors='replace') as f:
                found += ['%s: %s' % (os.path.basename(path), line.rstrip())
                          for line in f
                          if re.search(r'\d (ERROR|CRITICAL) ', line)]
        return found

    def assert_no_errors(self):
        errors = self.error_lines()
        assert errors == [], '\n'.join(errors[:40])

    def manage(self, *args):
        res = subprocess.run(
            [os.path.join(BIN, 'cinder-manage'), '--config-file', self.conf]
            + list(args), capture_output=True, text=True, timeout=600,
            env=self.env)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def start(self, binary, conf=None, key=None):
        key = key or binary
        with open(os.path.join(self.work, 'logs', key + '.out'),
                  'ab') as out:
            self.procs[key] = subprocess.Popen(
                [os.path.join(BIN, binary), '--config-file',
                 conf or self.conf],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env=self.env)

    def stop_services(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            sandbox.kill_session(proc.pid)
            proc.wait(timeout=30)

    def services_up(self):
        for binary, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError('%s exited with %s:\n%s' % (
                    binary, proc.returncode, self.log_tail()))
        try:
            status, body = self.api.call('GET', '/os-services',
                                         microversion='3.49', timeout=10)
        except OSError:
            return False
        if status != 200:
            return False
        up = {(s['binary'], s['host']) for s in body['services']
              if s['state'] == 'up' and s.get('backend_state', 'up') == 'up'}
        want = {('cinder-scheduler', HOST)} | {
            ('cinder-volume', '%s@%s' % (HOST, b)) for b in BACKENDS}
        return want <= up

    # -- the cinder CLI --------------------------------------------------

    def cli(self, *args):
        env = dict(os.environ, OS_AUTH_TYPE='noauth', OS_USER_ID='admin',
                   OS_PROJECT_ID='admin', CINDER_ENDPOINT=self.api.url,
                   OS_VOLUME_API_VERSION='3.71',
                   PYTHONPATH=patched_cinder.REPO)
        res = subprocess.run([CINDER] + list(args), capture_output=True,
                             text=True, timeout=180, env=env)
        assert res.returncode == 0, '%s failed:\n%s%s\n%s' % (
            ' '.join(args), res.stdout, res.stderr, self.log_tail(20))
        return res.stdout

    def cli_id(self, *args):
        out = self.cli(*args)
        return re.search(r'^\| id +\| (\S+) ', out, re.M).group(1)

    def status(self, kind, obj_id):
        status, body = self.api.call('GET', '/%s/%s' % (kind, obj_id))
        if status == 404:
            return None
        assert status == 200, body
        return body[kind[:-1]]['status']

    def wait_status(self, kind, obj_id, wanted, timeout=180):
        seen = []

        def reached():
            seen[:] = [self.status(kind, obj_id)]
            assert not (seen[0] or '').startswith('error'), (
                '%s %s went %s:\n%s' % (kind, obj_id, seen[0],
                                        self.log_tail()))
            return seen[0] == wanted

        assert sandbox.wait_for(reached, timeout, interval=0.5), (
            '%s %s is %s after %d s, not %s'
            % (kind, obj_id, seen, timeout, wanted))

    def backing(self, backend, name):
        return os.path.join(self.mounts[backend].backing, 'volumes', name)


@pytest.fixture(scope='module')
def deployment(tmp_path_factory):
    base = tmp_path_factory.mktemp('multiprocess')
    work = str(base / 'work')
    os.makedirs(os.path.join(work, 'logs'))
    site = patched_cinder.patched_copy(base / 'cinder')
    dep = Deployment(work, site)
    with contextlib.ExitStack() as stack:
        db = services.MariaDB(base / 'mariadb')
        stack.callback(db.stop)
        db.start()
        mq = services.RabbitMQ(base / 'rabbitmq')
        stack.callback(mq.stop)
        mq.start()
        dep.tgtd = sandbox.Tgtd(log_path=os.path.join(work, 'tgtd.log'))
        stack.callback(dep.tgtd.stop)
        dep.tgtd.start()
        homes = {}
        for name in BACKENDS:
            mount = sandbox.BindfsMount(base / name / 'backing',
                                        base / name / 'mnt')
            stack.callback(mount.stop)
            mount.start()
            dep.mounts[name] = mount
            homes[name] = os.path.join(mount.mountpoint, 'volumes')
            os.makedirs(homes[name])
        port = sandbox.free_port(aio_deployment.API_PORTS)
        assert port, 'no free API port in 18780-18789'
        dep.api = api_client.Api('http://127.0.0.1:%d/v3' % port)
        write_cinder_conf(dep.conf, work, port, db.url, mq.url, homes,
                          dep.tgtd)
        dep.manage('db', 'sync')
        stack.callback(dep.stop_services)
        # Volume services first: the API and the scheduler pin their RPC
        # versions to what the volume services report.
        dep.start('cinder-volume')
        dep.start('cinder-scheduler')
        dep.start('cinder-api')
        assert sandbox.wait_for(dep.services_up, 300, interval=1), (
            'the services did not come up:\n' + dep.log_tail())
        for name in BACKENDS:
            dep.cli('type-create', name)
            dep.cli('type-key', name, 'set', 'volume_backend_name=%s' % name)
        yield dep


def test_three_services_in_separate_processes(deployment):
    pids = {b: p.pid for b, p in deployment.procs.items()}
    assert len(set(pids.values())) == 3
    assert all(p.poll() is None for p in deployment.procs.values())
    # cinder-volume runs one child per backend, cinder-api its workers.
    assert len(sandbox.descendants(pids['cinder-volume'])) >= 2
    assert len(sandbox.descendants(pids['cinder-api'])) >= 2
    out = deployment.cli('service-list')
    for name in BACKENDS:
        assert re.search(r'cinder-volume +\| %s@%s +\|.*\| up ' % (
            HOST, name), out)
    assert 'mysql+pymysql' in open(deployment.conf).read()
    deployment.assert_no_errors()


def _qemu_io(info, *commands):
    url = 'iscsi://%s%%%s@%s/%s/%s' % (
        info['auth_username'], info['auth_password'], info['target_portal'],
        info['target_iqn'], info['target_lun'])
    cmd = ['qemu-io', '-f', 'raw']
    for c in commands:
        cmd += ['-c', c]
    res = subprocess.run(cmd + [url], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'verification failed' not in res.stdout, res.stdout
    return res.stdout


@pytest.mark.parametrize('backend', BACKENDS)
def test_volume_life_cycle_on_the_typed_backend(deployment, backend):
    dep = deployment
    other = [b for b in BACKENDS if b != backend][0]

    def on_backend(name):
        return (os.path.exists(dep.backing(backend, name)) and
                not os.path.exists(dep.backing(other, name)))

    vol = dep.cli_id('create', '1', '--volume-type', backend,
                     '--name', 'life-%s' % backend)
    dep.wait_status('volumes', vol, 'available')
    assert on_backend('volume-%s' % vol)
    out = dep.cli('show', vol)
    assert re.search(r'os-vol-host-attr:host +\| %s@%s#%s ' % (
        HOST, backend, backend), out), out

    # Data in over iSCSI.
    [info] = json.loads(dep.cli('export', '--json', vol))
    assert info['target_portal'] == dep.tgtd.portal
    assert info['target_iqn'] in dep.tgtd.targets()
    _qemu_io(info, 'write -P 0x3c 0 1M', 'read -P 0x3c 0 1M')
    dep.cli('delete-export', vol)
    dep.wait_status('volumes', vol, 'available')
    assert info['target_iqn'] not in dep.tgtd.targets()

    snap = dep.cli_id('snapshot-create', '--name', 'snap-%s' % backend, vol)
    dep.wait_status('snapshots', snap, 'available')
    assert on_backend('snapshot-%s' % snap)
    clone = dep.cli_id('create', '1', '--source-volid', vol,
                       '--name', 'clone-%s' % backend)
    from_snap = dep.cli_id('create', '1', '--snapshot-id', snap,
                           '--name', 'fromsnap-%s' % backend)
    dep.wait_status('volumes', clone, 'available')
    dep.wait_status('volumes', from_snap, 'available')
    assert on_backend('volume-%s' % clone)
    assert on_backend('volume-%s' % from_snap)
    with open(dep.backing(backend, 'volume-%s' % from_snap), 'rb') as f:
        assert f.read(MiB) == b'\x3c' * MiB

    dep.cli('extend', clone, '2')
    dep.wait_status('volumes', clone, 'available')
    assert os.path.getsize(dep.backing(backend, 'volume-%s' % clone)) == (
        2 * GiB)

    # The extended clone over iSCSI: the copied data, then the new space.
    [info] = json.loads(dep.cli('export', '--json', clone))
    _qemu_io(info, 'read -P 0x3c 0 1M', 'write -P 0x4d 1536M 1M',
             'read -P 0x4d 1536M 1M')
    dep.cli('delete-export', clone)
    dep.wait_status('volumes', clone, 'available')

    for v in (clone, from_snap):
        dep.cli('delete', v)
    for v in (clone, from_snap):
        assert sandbox.wait_for(lambda: dep.status('volumes', v) is None,
                                180, 0.5)
    dep.cli('snapshot-delete', snap)
    assert sandbox.wait_for(lambda: dep.status('snapshots', snap) is None,
                            180, 0.5)
    dep.cli('delete', vol)
    assert sandbox.wait_for(lambda: dep.status('volumes', vol) is None,
                            180, 0.5)
    assert os.listdir(os.path.dirname(dep.backing(backend, 'x'))) == []
    dep.assert_no_errors()


def _volume(dep, vol_id):
    status, body = dep.api.call('GET', '/volumes/%s' % vol_id)
    assert status == 200, body
    return body['volume']


def _wait_moved(dep, vol_id, backend, timeout=300):
    """Until the volume is available on ``backend``, migration success."""
    host = '%s@%s#%s' % (HOST, backend, backend)
    seen = {}

    def moved():
        seen.clear()
        seen.update(_volume(dep, vol_id))
        assert seen['os-vol-mig-status-attr:migstat'] != 'error', (
            '%s\n%s' % (seen, dep.log_tail()))
        assert not seen['status'].startswith('error'), seen
        return (seen['os-vol-mig-status-attr:migstat'] == 'success' and
                seen['status'] == 'available' and
                seen['os-vol-host-attr:host'] == host)
    assert sandbox.wait_for(moved, timeout, interval=0.5), seen
    return seen


def _driver_moves(dep):
    """The driver's own log line of each move it made, in order."""
    moves = []
    for path in dep.logs:
        with open(path, errors='replace') as f:
            moves += re.findall(r'Volume (\S+) moved to (\S+) \(\S+\) by '
                                r'the FUSE driver: (\w+)', f.read())
    return moves


# Offsets and bytes written over iSCSI before the moves, read after each.
PATTERNS = ((0, 0x5a), (700 * MiB, 0xa5))


def test_migrate_and_retype_between_backends_by_the_driver(deployment):
    """cinder retype and cinder migrate move the file, not over iSCSI.

    Cinder's generic migration would attach both volumes to this host
    with os-brick and dd every byte into a new volume (another name_id,
    another file name). Here the volume keeps its id and file name, the
    bytes written over iSCSI are read back over iSCSI from the other
    backend, and the source file is gone.
    """
    dep = deployment
    # The default type fits both backends, as cinder migrate needs; the
    # retype back then needs the move the type asks for.
    vol = dep.cli_id('create', '1', '--name', 'migrating')
    dep.wait_status('volumes', vol, 'available')
    name = 'volume-%s' % vol
    first = re.match(r'%s@(\w+)#' % HOST,
                     _volume(dep, vol)['os-vol-host-attr:host']).group(1)
    second = [b for b in BACKENDS if b != first][0]
    writes = ['write -P 0x%x %d 1M' % (p, off) for off, p in PATTERNS]
    reads = ['read -P 0x%x %d 1M' % (p, off) for off, p in PATTERNS]

    def check_data(backend):
        other = [b for b in BACKENDS if b != backend][0]
        assert not os.path.exists(dep.backing(other, name))
        path = dep.backing(backend, name)
        assert os.path.getsize(path) == GiB
        with open(path, 'rb') as f:
            for offset, pattern in PATTERNS:
                f.seek(offset)
                assert f.read(MiB) == bytes([pattern]) * MiB
        # Sparse: the 2 MiB written, not the 1 GiB a dd would allocate.
        assert os.stat(path).st_blocks * 512 < 64 * MiB
        [info] = json.loads(dep.cli('export', '--json', vol))
        _qemu_io(info, *reads)
        dep.cli('delete-export', vol)
        dep.wait_status('volumes', vol, 'available')

    [info] = json.loads(dep.cli('export', '--json', vol))
    _qemu_io(info, *(writes + reads))
    dep.cli('delete-export', vol)
    dep.wait_status('volumes', vol, 'available')
    before = len(_driver_moves(dep))

    default_type = _volume(dep, vol)['volume_type']
    dep.cli('migrate', vol, '%s@%s#%s' % (HOST, second, second))
    seen = _wait_moved(dep, vol, second)
    assert seen['volume_type'] == default_type  # migrate keeps the type
    check_data(second)

    dep.cli('retype', '--migration-policy', 'on-demand', vol, first)
    seen = _wait_moved(dep, vol, first)
    assert seen['volume_type'] == first
    check_data(first)

    # The driver moved it both times; the generic path would have made
    # a new volume whose name_id the volume would now carry.
    assert _driver_moves(dep)[before:] == [
        (vol, '%s@%s#%s' % (HOST, second, second), 'copy'),
        (vol, '%s@%s#%s' % (HOST, first, first), 'copy')]
    assert seen['os-vol-mig-status-attr:name_id'] is None
    status, body = dep.api.call('GET', '/volumes?all_tenants=1')
    assert [v['id'] for v in body['volumes']
            if v['name'] == 'migrating'] == [vol]

    dep.cli('delete', vol)
    assert sandbox.wait_for(lambda: dep.status('volumes', vol) is None,
                            180, 0.5)
    for backend in BACKENDS:
        assert not os.path.exists(dep.backing(backend, name))
    dep.assert_no_errors()


def _statuses(dep, ids):
    status, body = dep.api.call('GET', '/volumes/detail?limit=1000')
    assert status == 200, body
    return {v['id']: v['status'] for v in body['volumes'] if v['id'] in ids}


def _settle(dep, ids, wanted, submit, deadline):
    """Poll all volumes; hand each to ``submit`` once it is ``wanted``.

    Returns the last statuses. Fails on an error status, or when the
    deadline passes with a volume still on its way (stuck).
    """
    handed = set()
    while True:
        statuses = _statuses(dep, ids)
        bad = {i: s for i, s in statuses.items() if s.startswith('error')}
        assert not bad, 'volumes in error: %s\n%s' % (bad, dep.log_tail())
        for vol_id, status in statuses.items():
            if status == wanted and vol_id not in handed:
                handed.add(vol_id)
                submit(vol_id)
        if len(handed) == len(ids):
            return statuses
        if time.monotonic() > deadline:
            stuck = {i: s for i, s in statuses.items() if i not in handed}
            raise AssertionError('stuck after the deadline: %s\n%s'
                                 % (stuck, dep.log_tail()))
        time.sleep(2)


def test_fifty_concurrent_creates_and_exports(deployment):
    dep = deployment
    api = dep.api
    deadline = time.monotonic() + 900

    def create(i):
        backend = BACKENDS[i % 2]
        status, body = api.call('POST', '/volumes', {'volume': {
            'size': 1, 'name': 'burst-%02d' % i, 'volume_type': backend}})
        assert status == 202, body
        return body['volume']['id'], backend

    def export(vol_id):
        status, body = api.action(vol_id, {'os-export': {}})
        # Synchronous with a body: 200, like os-initialize_connection.
        assert status == 200, (vol_id, status, body)
        return body['connection_info']['data']

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        created = dict(pool.map(create, range(BURST)))
        exports = {}
        _settle(dep, set(created), 'available',
                lambda v: exports.__setitem__(v, pool.submit(export, v)),
                deadline)
        infos = {v: f.result(timeout=max(1, deadline - time.monotonic()))
                 for v, f in exports.items()}

    statuses = _statuses(dep, set(created))
    assert set(statuses.values()) == {'exported'}, statuses
    targets = dep.tgtd.targets()
    for vol_id, backend in created.items():
        assert infos[vol_id]['target_iqn'] in targets
        assert os.path.exists(dep.backing(backend, 'volume-%s' % vol_id))
        other = [b for b in BACKENDS if b != backend][0]
        assert not os.path.exists(dep.backing(other, 'volume-%s' % vol_id))
    assert len({i['target_iqn'] for i in infos.values()}) == BURST

    # And all of it away again, as concurrently.
    def unexport(vol_id):
        status, body = api.action(vol_id, {'os-delete-export': {}})
        assert status == 202, (vol_id, status, body)

    def delete(vol_id):
        status, body = api.call('DELETE', '/volumes/%s' % vol_id)
        assert status == 202, (vol_id, status, body)

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        for future in [pool.submit(unexport, v) for v in created]:
            future.result(timeout=max(1, deadline - time.monotonic()))
        deletes = []
        _settle(dep, set(created), 'available',
                lambda v: deletes.append(pool.submit(delete, v)), deadline)
        for future in deletes:
            future.result(timeout=max(1, deadline - time.monotonic()))
    assert sandbox.wait_for(lambda: not _statuses(dep, set(created)),
                            max(1, deadline - time.monotonic()), 1), (
        _statuses(dep, set(created)))
    assert dep.tgtd.targets() == {}
    for backend in BACKENDS:
        assert os.listdir(os.path.dirname(dep.backing(backend, 'x'))) == []
    dep.assert_no_errors()


def _shared_host_conf(dep, name, home, tgtd):
    """cinder.conf of one more cinder-volume host: ``name``, one backend.

    Both such hosts name the backend ``shared`` and use the same
    volumes_home, as two machines mounting one FUSE storage would; each
    has its own tgtd and volumes_dir, as a machine has.
    """
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(dep.conf)
    path = os.path.join(dep.work, 'cinder-%s.conf' % name)
    for section in BACKENDS:
        conf.remove_section(section)
    conf['DEFAULT'].update(host=name, enabled_backends='shared',
                           log_file='cinder-volume-%s.log' % name)
    conf['shared'] = {
        'volume_driver': 'fuse_cinder.driver.FuseISCSIDriver',
        'volume_backend_name': 'shared',
        'volumes_home': home,
        'volumes_dir': os.path.join(dep.work, 'targets-%s' % name),
        'target_ip_address': tgtd.ip,
        'target_port': str(tgtd.portal_port),
        'fuse_tgt_control_port': str(tgtd.control_port),
    }
    conf['fuse_cinder_tgt_privileged']['helper_command'] = (
        '%s --config-file %s' % (os.path.join(BIN, 'privsep-helper'), path))
    with open(path, 'w') as f:
        conf.write(f)
    return path


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        sandbox.kill_session(proc.pid)
        proc.wait(timeout=30)


def _backend_up(dep, backend):
    status, body = dep.api.call('GET', '/os-services', microversion='3.49')
    assert status == 200, body
    return any(s['binary'] == 'cinder-volume' and s['host'] == backend and
               s['state'] == 'up' and s.get('backend_state') == 'up'
               for s in body['services'])


def test_a_dead_hosts_volumes_are_served_by_the_other_host(deployment):
    """Host failover on shared FUSE storage (README, "Host failover").

    Host a serves two volumes from a volumes_home that host b mounts
    too; one is exported with os-export. Host a dies (cinder-volume
    killed, its tgtd gone). ``cinder-manage volume update_host`` gives
    the volumes to host b, whose start-up ensure_export re-creates the
    exported volume's target (same IQN and CHAP) in its own tgtd; the
    other is exported on demand there. The data written through host a
    is read back over iSCSI through host b.
    """
    dep = deployment
    home = os.path.join(dep.mounts['fuse1'].mountpoint, 'shared')
    os.makedirs(home)
    tgtds = {}
    with contextlib.ExitStack() as stack:
        for name in ('fuse-mp-a', 'fuse-mp-b'):
            tgtds[name] = sandbox.Tgtd(
                log_path=os.path.join(dep.work, 'tgtd-%s.log' % name))
            stack.callback(tgtds[name].stop)
            tgtds[name].start()
        conf_a = _shared_host_conf(dep, 'fuse-mp-a', home,
                                   tgtds['fuse-mp-a'])
        conf_b = _shared_host_conf(dep, 'fuse-mp-b', home,
                                   tgtds['fuse-mp-b'])
        dep.start('cinder-volume', conf_a, 'cinder-volume-a')
        assert sandbox.wait_for(
            lambda: _backend_up(dep, 'fuse-mp-a@shared'), 300, 1), (
            dep.log_tail())
        dep.cli('type-create', 'shared')
        dep.cli('type-key', 'shared', 'set', 'volume_backend_name=shared')
        vols = [dep.cli_id('create', '1', '--volume-type', 'shared',
                           '--name', 'failover-%d' % i) for i in range(2)]
        infos = {}
        for i, vol in enumerate(vols):
            dep.wait_status('volumes', vol, 'available')
            assert _volume(dep, vol)['os-vol-host-attr:host'] == (
                'fuse-mp-a@shared#shared')
            [infos[vol]] = json.loads(dep.cli('export', '--json', vol))
            assert infos[vol]['target_portal'] == tgtds['fuse-mp-a'].portal
            _qemu_io(infos[vol], 'write -P 0x%x 0 1M' % (0x61 + i),
                     'write -P 0x%x 900M 1M' % (0x71 + i))
        kept, on_demand = vols
        dep.cli('delete-export', on_demand)
        dep.wait_status('volumes', on_demand, 'available')
        assert dep.status('volumes', kept) == 'exported'

        # Host a dies: its cinder-volume and its tgtd.
        dead = dep.procs.pop('cinder-volume-a')
        sandbox.kill_session(dead.pid)
        dead.wait(timeout=30)
        tgtds['fuse-mp-a'].stop()

        dep.manage('volume', 'update_host',
                   '--currenthost', 'fuse-mp-a@shared#shared',
                   '--newhost', 'fuse-mp-b@shared#shared')
        dep.start('cinder-volume', conf_b, 'cinder-volume-b')
        stack.callback(_stop, dep.procs['cinder-volume-b'])
        assert sandbox.wait_for(
            lambda: _backend_up(dep, 'fuse-mp-b@shared'), 300, 1), (
            dep.log_tail())

        # ensure_export at b's start-up: the same target, CHAP and data.
        target = tgtds['fuse-mp-b']
        assert sandbox.wait_for(
            lambda: infos[kept]['target_iqn'] in target.targets(), 60, 0.5)
        moved = dict(infos[kept], target_portal=target.portal)
        _qemu_io(moved, 'read -P 0x61 0 1M', 'read -P 0x71 900M 1M')
        # The other one, exported on demand by host b.
        [info] = json.loads(dep.cli('export', '--json', on_demand))
        assert info['target_portal'] == target.portal
        _qemu_io(info, 'read -P 0x62 0 1M', 'read -P 0x72 900M 1M')
        for vol in vols:
            assert _volume(dep, vol)['os-vol-host-attr:host'] == (
                'fuse-mp-b@shared#shared')
            dep.cli('delete-export', vol)
        for vol in vols:
            dep.wait_status('volumes', vol, 'available')
            dep.cli('delete', vol)
        for vol in vols:
            assert sandbox.wait_for(
                lambda: dep.status('volumes', vol) is None, 180, 0.5)
        assert os.listdir(home) == []
        assert target.targets() == {}
    dep.assert_no_errors()


def test_no_error_in_any_service_log(deployment):
    assert len(deployment.logs) >= 3
    deployment.assert_no_errors()
