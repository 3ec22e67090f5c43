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
"""The privileged tgt entry points on a real tgtd and a real bindfs mount.

Entry points run in-process (``set_client_mode(False)``) except in the
tests that start the real privsep daemon. Data goes over iSCSI with
qemu-io (libiscsi) on 127.0.0.1 only.
"""

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from unittest import mock
import uuid

from cinder import context
from cinder import exception
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_privsep import priv_context
import pytest

from fuse_cinder.allinone import sandbox
from fuse_cinder import driver
from fuse_cinder import mount
from fuse_cinder import privileged
from fuse_cinder.privileged import tgt as ptgt
from fuse_cinder.targets import tgtd_mgmt
from tests.functional import tgtd as tgtd_helpers
from tests.functional import volumes

pytestmark = tgtd_helpers.requirements('bindfs', 'qemu-io')

CONTROL_PORTS = range(60, 70)
PORTAL_PORTS = range(13301, 13310)
PREFIX = 'iqn.2010-10.org.openstack:volume-'
USER, SECRET = 'fcuser', 'fcsecret12345'
GOOD = 'iqn.1994-05.com.example:allowed'
BAD = 'iqn.1994-05.com.example:stranger'
SIZE = 8 << 20
CTX = context.get_admin_context()


@pytest.fixture
def daemon(tmp_path):
    handle = sandbox.Tgtd(control_ports=CONTROL_PORTS,
                          portal_ports=PORTAL_PORTS,
                          log_path=str(tmp_path / 'tgtd.log'))
    try:
        yield handle.start()
    finally:
        handle.stop()


@pytest.fixture
def fuse(tmp_path):
    handle = sandbox.BindfsMount(str(tmp_path / 'backing'),
                                 str(tmp_path / 'mnt'),
                                 log_path=str(tmp_path / 'bindfs.log'))
    try:
        yield handle.start()
    finally:
        handle.stop()


@pytest.fixture
def in_process():
    privileged.tgt_pctxt.set_client_mode(False)
    try:
        yield
    finally:
        privileged.tgt_pctxt.set_client_mode(True)


def new_volume(fuse):
    """(iqn, path on the mount, serial) of a new sparse volume file."""
    vid = str(uuid.uuid4())
    with open(os.path.join(fuse.backing, 'volume-' + vid), 'wb') as f:
        f.truncate(SIZE)
    return (PREFIX + vid, os.path.join(fuse.mountpoint, 'volume-' + vid),
            vid.replace('-', ''))


def export(daemon, fuse, initiators=(), user=USER, **kwargs):
    iqn, path, serial = new_volume(fuse)
    args = dict(bsoflags='direct', write_cache=True, serial=serial)
    args.update(kwargs)
    tid = ptgt.export_target(daemon.control_port, iqn, path, user, SECRET,
                             list(initiators), **args)
    return tid, iqn, path


def qemu_io(daemon, iqn, command, user=USER, secret=SECRET,
            initiator=None, timeout=60):
    """(exit code, output) of qemu-io on LUN 1 of ``iqn``."""
    if initiator is None:
        image = ['iscsi://%s%%%s@%s/%s/1' % (user, secret, daemon.portal,
                                             iqn)]
    else:
        image = ['--image-opts',
                 'driver=iscsi,transport=tcp,portal=%s,target=%s,lun=1,'
                 'user=%s,password=%s,initiator-name=%s'
                 % (daemon.portal, iqn, user, secret, initiator)]
    res = subprocess.run(['qemu-io', '-c', command] + image,
                         capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


def ms(start):
    return (time.monotonic() - start) * 1000


def test_export_serves_chap_and_acl_then_delete_leaves_nothing(
        daemon, fuse, in_process):
    iqn, path, serial = new_volume(fuse)
    start = time.monotonic()
    tid = ptgt.export_target(daemon.control_port, iqn, path, USER, SECRET,
                             [GOOD], 'direct', False, serial)
    print('\nexport_target: %.1f ms' % ms(start))

    shown = ptgt.show(daemon.control_port)
    assert shown == sandbox.tgtadm(daemon.control_port, '--lld', 'iscsi',
                                   '--mode', 'target', '--op',
                                   'show').stdout
    state = tgtd_mgmt.parse_targets(shown)[iqn]
    assert (state.tid, state.luns[1].path, state.accounts) == (
        tid, path, [USER])
    assert sorted(state.acl) == sorted([GOOD, ptgt.NO_ADDRESS])

    code, out = qemu_io(daemon, iqn, 'write -P 0x5a 0 1M', initiator=GOOD)
    assert code == 0 and 'wrote 1048576/1048576' in out, out
    code, out = qemu_io(daemon, iqn, 'read -P 0x5a 0 1M', initiator=GOOD)
    assert code == 0 and 'read 1048576/1048576' in out, out
    with open(path, 'rb') as f:  # the test may touch the mount
        assert f.read(1 << 20) == b'\x5a' * (1 << 20)

    code, out = qemu_io(daemon, iqn, 'read 0 4k', secret='wrongsecret12',
                        initiator=GOOD)
    assert code != 0, out
    code, out = qemu_io(daemon, iqn, 'read 0 4k', initiator=BAD)
    assert code != 0, out

    start = time.monotonic()
    ptgt.set_acl(daemon.control_port, iqn, [])
    print('set_acl to ALL: %.1f ms' % ms(start))
    code, out = qemu_io(daemon, iqn, 'read -P 0x5a 0 4k', initiator=BAD)
    assert code == 0, out
    ptgt.set_acl(daemon.control_port, iqn, [BAD])
    code, out = qemu_io(daemon, iqn, 'read 0 4k', initiator=GOOD)
    assert code != 0, out

    start = time.monotonic()
    ptgt.delete_target(daemon.control_port, iqn)
    print('delete_target: %.1f ms' % ms(start))
    assert iqn not in daemon.targets()
    assert sandbox.list_accounts(daemon.control_port) == []
    ptgt.delete_target(daemon.control_port, iqn)  # gone is fine


def test_export_is_idempotent_and_refuses_other_settings(
        daemon, fuse, in_process):
    tid, iqn, path = export(daemon, fuse)
    serial = iqn[len(PREFIX):].replace('-', '')
    again = ptgt.export_target(daemon.control_port, iqn, path, USER, SECRET,
                               [GOOD], 'direct', True, serial)
    assert again == tid
    assert sorted(daemon.targets()) == [iqn]
    with pytest.raises(ptgt.TargetRefused):
        ptgt.export_target(daemon.control_port, iqn, path, USER, SECRET,
                           [], 'sync', True, serial)


def test_symlink_volume_is_refused_and_leaves_nothing(
        daemon, fuse, in_process):
    vid = str(uuid.uuid4())
    os.symlink('/etc/shadow', os.path.join(fuse.backing, 'volume-' + vid))
    path = os.path.join(fuse.mountpoint, 'volume-' + vid)
    with pytest.raises(ptgt.TargetRefused):
        ptgt.export_target(daemon.control_port, PREFIX + vid, path, USER,
                           SECRET, [], '', True, vid.replace('-', ''))
    assert daemon.targets() == {}
    assert sandbox.list_accounts(daemon.control_port) == []


def _driver(daemon, fuse, backend_conf, tmp_path):
    """The real driver on this tgtd and mount, its tgt calls in-process."""
    conf = backend_conf(volumes_home=fuse.mountpoint,
                        volumes_dir=str(tmp_path / 'targets'),
                        fuse_tgt_control_port=daemon.control_port,
                        target_ip_address='127.0.0.1',
                        target_port=daemon.portal_port,
                        fuse_fs_call_timeout=10)
    drv = driver.FuseISCSIDriver(configuration=conf,
                                 execute=processutils.execute)
    drv.target_driver.db = sandbox.NoDB()    # CHAP is on the volumes
    drv.do_setup(CTX)
    return drv


def test_driver_export_of_a_missing_file_says_so_and_leaves_nothing(
        daemon, fuse, in_process, backend_conf, tmp_path):
    """No stat per export: tgtd's failed open, then a look, say why."""
    drv = _driver(daemon, fuse, backend_conf, tmp_path)
    vol = volumes.volume(str(uuid.uuid4()))      # never created
    with pytest.raises(exception.VolumeBackendAPIException) as err:
        drv.create_export(CTX, vol, {'initiator': GOOD})
    assert 'no backing file' in str(err.value)
    assert fuse.mountpoint in str(err.value)
    assert daemon.targets() == {}
    assert sandbox.list_accounts(daemon.control_port) == []


def test_driver_export_just_after_the_mount_died_names_it(
        daemon, fuse, in_process, backend_conf, tmp_path):
    """A look that vouched for a mount now dead; tgtd's failure names it.

    After tgtd fails to open the file, a look at it names the dead
    mount, and the failed export leaves nothing in tgtd.
    """
    drv = _driver(daemon, fuse, backend_conf, tmp_path)
    first, second = (volumes.volume(str(uuid.uuid4())) for _ in range(2))
    for vol in (first, second):
        drv.create_volume(vol)
    connector = {'initiator': GOOD}
    update = drv.create_export(CTX, first, connector)
    first.provider_auth = update['provider_auth']
    # The look before the export answers, then the daemon dies: what a
    # look running while another export asked would vouch for.
    real_capacity = drv.mount.capacity

    def capacity_then_death():
        found = real_capacity()
        fuse.kill()
        return found

    with mock.patch.object(drv.mount, 'capacity',
                           side_effect=capacity_then_death):
        with pytest.raises(mount.FuseMountUnavailable) as err:
            drv.create_export(CTX, second, connector)
    assert fuse.mountpoint in str(err.value)
    assert 'ENOTCONN' in str(err.value)
    assert list(daemon.targets()) == [PREFIX + first.id]
    assert sandbox.list_accounts(daemon.control_port) == [
        first.provider_auth.split()[1]]


def test_foreign_targets_are_left_alone(daemon, fuse, in_process):
    client = tgtd_mgmt.TgtdClient(daemon.control_port)
    client.new_target(9, 'iqn.2003-01.org.example:backup')
    lookalike = PREFIX + str(uuid.uuid4())
    client.new_target(10, lookalike)
    client.new_lun(10, 1, '/etc/shadow')
    with pytest.raises(exception.InvalidInput):
        ptgt.set_acl(daemon.control_port, 'iqn.2003-01.org.example:backup',
                     [])
    with pytest.raises(ptgt.TargetRefused):
        ptgt.set_acl(daemon.control_port, lookalike, [])
    with pytest.raises(ptgt.TargetRefused):
        ptgt.delete_target(daemon.control_port, lookalike)
    state = tgtd_mgmt.parse_targets(ptgt.show(daemon.control_port))[lookalike]
    assert state.acl == [] and state.luns[1].path == '/etc/shadow'
    assert len(daemon.targets()) == 2


def test_account_in_use_elsewhere_is_not_replaced(daemon, fuse, in_process):
    tid, iqn, path = export(daemon, fuse)
    with pytest.raises(ptgt.TargetRefused):
        export(daemon, fuse)  # same CHAP user, bound to the first target
    assert sorted(daemon.targets()) == [iqn]
    assert tgtd_mgmt.parse_targets(
        ptgt.show(daemon.control_port))[iqn].accounts == [USER]
    # removing some other export that recorded this user keeps the account
    ptgt.delete_target(daemon.control_port, PREFIX + str(uuid.uuid4()), USER)
    assert sandbox.list_accounts(daemon.control_port) == [USER]
    assert tgtd_mgmt.parse_targets(
        ptgt.show(daemon.control_port))[iqn].accounts == [USER]


def test_reopen_keeps_a_session_working(daemon, fuse, in_process):
    tid, iqn, path = export(daemon, fuse, initiators=[GOOD])
    serial = iqn[len(PREFIX):].replace('-', '')
    session = subprocess.Popen(
        ['qemu-io', '--image-opts',
         'driver=iscsi,transport=tcp,portal=%s,target=%s,lun=1,user=%s,'
         'password=%s,initiator-name=%s' % (daemon.portal, iqn, USER, SECRET,
                                            GOOD)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        session.stdin.write('write -P 0x33 0 64k\n')
        session.stdin.flush()
        assert sandbox.wait_for(
            lambda: tgtd_mgmt.parse_targets(
                ptgt.show(daemon.control_port))[iqn].nexus, 20)
        start = time.monotonic()
        ptgt.reopen_lun(daemon.control_port, iqn, path, 'direct', True,
                        serial)
        print('\nreopen_lun with a session: %.1f ms' % ms(start))
        state = tgtd_mgmt.parse_targets(ptgt.show(daemon.control_port))[iqn]
        assert state.nexus and state.luns[1].path == path
        out, _err = session.communicate(
            'read -P 0x33 0 64k\nwrite -P 0x44 64k 64k\nquit\n', timeout=60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert out.count('wrote 65536/65536') == 2, out
    assert 'read 65536/65536' in out and 'Pattern verification' not in out
    with open(path, 'rb') as f:
        f.seek(64 << 10)
        assert f.read(64 << 10) == b'\x44' * (64 << 10)


CONCURRENT = textwrap.dedent('''
    import concurrent.futures, json, os, sys, uuid
    from fuse_cinder import privileged
    from fuse_cinder.privileged import tgt as ptgt
    privileged.tgt_pctxt.set_client_mode(False)
    port, backing, mnt, count = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                                 int(sys.argv[4]))
    def one(i):
        vid = str(uuid.uuid4())
        with open(os.path.join(backing, 'volume-' + vid), 'wb') as f:
            f.truncate(1 << 20)
        user = 'u' + vid.replace('-', '')[:16]
        tid = ptgt.export_target(port, %r + vid,
                                 os.path.join(mnt, 'volume-' + vid), user,
                                 'secret123456', [], '', True,
                                 vid.replace('-', ''))
        return %r + vid, tid
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        print(json.dumps(list(pool.map(one, range(count)))))
''') % (PREFIX, PREFIX)


def test_two_processes_exporting_at_once_never_share_a_tid(daemon, fuse):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cmd = [sys.executable, '-W', 'ignore', '-c', CONCURRENT,
           str(daemon.control_port), fuse.backing, fuse.mountpoint, '25']
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results += [tuple(r) for r in json.loads(
            out.strip().splitlines()[-1])]
    print('\n2 x 25 concurrent exports: %.0f ms' % ms(start))
    targets = daemon.targets()
    assert len(results) == 50 == len(targets)
    assert dict(results) == targets
    assert len(set(targets.values())) == 50


def test_no_listing_beside_500_other_targets(daemon, fuse, in_process,
                                             monkeypatch):
    """Export, ACL and removal cost the same beside 0 or 500 targets.

    A listing grows with every target (600 KB at 500), so the hot path
    must make none: tgtd's own refusals and the daemon's memory answer.
    Nor a listing of tgtd's descriptors once the first export has the
    daemon's hint of the free ones.
    """
    listings = []
    real_show = tgtd_mgmt.TgtdClient.show_targets
    monkeypatch.setattr(tgtd_mgmt.TgtdClient, 'show_targets',
                        lambda self: listings.append(1) or real_show(self))
    fd_listings = []
    real_fds = ptgt._fd_numbers
    monkeypatch.setattr(ptgt, '_fd_numbers',
                        lambda pid: fd_listings.append(pid) or real_fds(pid))
    client = tgtd_mgmt.TgtdClient(daemon.control_port)
    for figure in (0, 500):
        for tid in range(1000, 1000 + figure):
            client.new_target(tid, 'iqn.2003-01.org.example:other-%d' % tid)
        iqn, path, serial = new_volume(fuse)
        del listings[:]
        start = time.monotonic()
        tid = ptgt.export_target(daemon.control_port, iqn, path, USER,
                                 SECRET, [], 'direct', True, serial)
        ptgt.set_acl(daemon.control_port, iqn, [GOOD])
        print('\nexport_target + set_acl with %d other targets: %.1f ms'
              % (figure, ms(start)))
        start = time.monotonic()
        ptgt.delete_target(daemon.control_port, iqn, USER)
        print('delete_target with %d other targets: %.1f ms'
              % (figure, ms(start)))
        assert listings == []
        assert len(fd_listings) == 1   # the first export only: the hint
        assert tid == 1
        assert iqn not in daemon.targets()
        assert sandbox.list_accounts(daemon.control_port) == []


def test_memory_follows_what_others_change(daemon, fuse, in_process):
    """Targets removed or taken behind the daemon's back are found out."""
    tid, iqn, path = export(daemon, fuse, initiators=[GOOD])
    client = tgtd_mgmt.TgtdClient(daemon.control_port)
    client.delete_target(tid, force=True)      # an administrator's tgtadm
    with pytest.raises(ptgt.TargetMissing):
        ptgt.set_acl(daemon.control_port, iqn, [BAD])
    client.delete_account(USER)
    # the tid the daemon would pick next is taken by someone else
    client.new_target(tid, 'iqn.2003-01.org.example:taken')
    again, iqn2, path2 = export(daemon, fuse, initiators=[GOOD])
    assert again != tid
    assert daemon.targets() == {'iqn.2003-01.org.example:taken': tid,
                                iqn2: again}
    code, out = qemu_io(daemon, iqn2, 'read 0 4k', initiator=GOOD)
    assert code == 0, out


@pytest.fixture
def real_daemon():
    """tgt_pctxt's privsep daemon, started as root from this venv."""
    helper = os.path.join(os.path.dirname(sys.executable), 'privsep-helper')
    cfg.CONF.set_override('helper_command', helper,
                          group='fuse_cinder_tgt_privileged')
    privileged.tgt_pctxt.set_client_mode(True)
    privileged.tgt_pctxt.start(priv_context.Method.ROOTWRAP)
    try:
        yield privileged.tgt_pctxt
    finally:
        privileged.tgt_pctxt.stop()
        cfg.CONF.clear_override('helper_command',
                                group='fuse_cinder_tgt_privileged')


def _daemon_pid(context):
    """The live privsep daemon of ``context``, by its channel's socket path.

    The helper that connected the channel forks the daemon and exits, so
    the channel's peer credentials name a dead process.
    """
    sock_path = context.channel.writer.writesock.getsockname().encode()
    for name in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                if name.isdigit() and sock_path in f.read().split(b'\0'):
                    return int(name)
        except OSError:
            pass
    raise AssertionError('no privsep daemon serves %s' % sock_path)


def test_real_privsep_daemon_exports_with_only_cap_sys_ptrace(
        daemon, fuse, real_daemon):
    start = time.monotonic()
    tid, iqn, path = export(daemon, fuse, initiators=[GOOD])
    print('\nexport_target through privsep-helper (first call): %.1f ms'
          % ms(start))
    with open('/proc/%d/status' % _daemon_pid(real_daemon)) as f:
        status = dict(line.split(':', 1) for line in f)
    assert int(status['CapEff'], 16) == 1 << 19  # CAP_SYS_PTRACE only
    assert status['Uid'].split()[:2] == ['0', '0']
    assert status['Gid'].split()[:2] == ['0', '0']
    code, out = qemu_io(daemon, iqn, 'write -P 0x5a 0 1M', initiator=GOOD)
    assert code == 0, out
    with pytest.raises(ptgt.TargetRefused):  # rebuilt from the daemon's
        ptgt.set_acl(daemon.control_port, PREFIX + str(uuid.uuid4()), [])
    ptgt.delete_target(daemon.control_port, iqn)
    assert daemon.targets() == {}
    assert sandbox.list_accounts(daemon.control_port) == []


# -- no CHAP secret on any argv, seen as another local user would ---------

POLLER = textwrap.dedent('''
    import json, os, sys, threading
    needles = [s.encode() for s in json.loads(sys.stdin.readline())]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()),
                     daemon=True).start()
    me = str(os.getpid())
    scans = reads = 0
    hits, programs = {}, set()
    print('polling', flush=True)
    while not stop.is_set():
        scans += 1
        for pid in os.listdir('/proc'):
            if not pid.isdigit() or pid == me:
                continue
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    cmdline = f.read()
            except OSError:
                continue
            reads += 1
            if cmdline:
                programs.add(os.path.basename(
                    cmdline.split(b'\\0')[0]).decode(errors='replace'))
            if any(n in cmdline for n in needles):
                hits[pid] = cmdline.replace(b'\\0', b' ').decode(
                    errors='replace')
    print(json.dumps({'scans': scans, 'reads': reads, 'hits': hits,
                      'programs': sorted(programs)}), flush=True)
''')


def test_no_chap_secret_on_any_argv_during_50_export_cycles(
        daemon, fuse, real_daemon, backend_conf, tmp_path):
    """What tgt-admin leaked (tgtadm --password=...) a local user sees.

    The real driver, its tgt calls in the real privsep daemon, exports
    and removes volumes while a process of 'nobody' reads every
    /proc/*/cmdline over and over. A canary on a root process's argv
    proves that the poller would see a secret.
    """
    conf = backend_conf(volumes_home=fuse.mountpoint,
                        volumes_dir=str(tmp_path / 'targets'),
                        fuse_tgt_control_port=daemon.control_port,
                        target_ip_address='127.0.0.1',
                        target_port=daemon.portal_port)
    drv = driver.FuseISCSIDriver(configuration=conf,
                                 execute=processutils.execute)
    drv.target_driver.db = sandbox.NoDB()    # CHAP is on the volumes
    drv.do_setup(CTX)
    vols = [volumes.volume(str(uuid.uuid4())) for _ in range(5)]
    chap = {}
    for vol in vols:
        drv.create_volume(vol)
        chap[vol.id] = ('u' + secrets.token_hex(8), secrets.token_hex(8))
    canary = 'canary' + secrets.token_hex(8)

    poller = subprocess.Popen(
        [sys.executable, '-I', '-c', POLLER], user='nobody', group='nogroup',
        extra_groups=[], cwd='/', env={'PATH': '/usr/bin:/bin'},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        poller.stdin.write(json.dumps(
            [s for _u, s in chap.values()] + [canary]) + '\n')
        poller.stdin.flush()
        assert poller.stdout.readline().strip() == 'polling'
        subprocess.run([sys.executable, '-c', 'import time; time.sleep(1)',
                        canary], check=True, timeout=30)
        start = time.monotonic()
        for cycle in range(50):
            vol = vols[cycle % len(vols)]
            vol.provider_auth = 'CHAP %s %s' % chap[vol.id]
            connector = {'initiator': GOOD}
            drv.validate_connector(connector)
            update = drv.create_export(CTX, vol, connector)
            assert update['provider_auth'] == vol.provider_auth
            vol.provider_location = update['provider_location']
            drv.initialize_connection(vol, connector)
            drv.remove_export(CTX, vol)
            vol.provider_location = None
        elapsed = ms(start)
        poller.stdin.write('stop\n')
        poller.stdin.flush()
        out, _err = poller.communicate(timeout=60)
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.wait()
    seen = json.loads(out.strip().splitlines()[-1])
    print('\n50 create_export/initialize_connection/remove_export cycles: '
          '%.0f ms (%.1f ms each); nobody read %d cmdlines in %d scans of '
          '/proc, secret on an argv: %d'
          % (elapsed, elapsed / 50, seen['reads'], seen['scans'],
             sum(canary not in c for c in seen['hits'].values())))
    # the poller saw root's processes, the canary among them
    assert 'tgtd' in seen['programs'], seen['programs']
    assert [c for c in seen['hits'].values() if canary in c], seen
    assert seen['scans'] > 50
    leaks = [c for c in seen['hits'].values() if canary not in c]
    assert leaks == []
    assert daemon.targets() == {}
    assert sandbox.list_accounts(daemon.control_port) == []
