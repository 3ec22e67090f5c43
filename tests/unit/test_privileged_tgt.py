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
"""The privileged tgt helpers' validators, fed hostile values."""

import os
import subprocess
import sys
from unittest import mock

import pytest

from cinder import exception

from fuse_cinder import privileged
from fuse_cinder.privileged import tgt as ptgt
from fuse_cinder.privileged import tgt_view
from fuse_cinder.targets import tgtd_mgmt

UUID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'
IQN = 'iqn.2010-10.org.openstack:volume-' + UUID
PATH = '/mnt/cdmi/volumes/volume-' + UUID
SERIAL = UUID.replace('-', '')
MOUNTINFO = (
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n'
    '40 22 0:45 / /mnt/cdmi rw,nosuid,nodev shared:20 - fuse.cdmifuse '
    'cdmifuse rw,user_id=0,group_id=0,allow_other\n'
    '41 40 254:0 /etc /mnt/cdmi/volumes/etc rw - ext4 /dev/vda1 rw\n'
    '42 40 254:0 /etc/shadow /mnt/cdmi/volumes/volume-'
    'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee rw - ext4 /dev/vda1 rw\n'
    '43 22 0:46 / /mnt/with\\040space rw - fuse.bindfs x rw\n')

COMMON_HOSTILE = [None, 1, 1.0, True, False, b'x', ['x'], {'x': 1}, '',
                  ' ', '\n', '\0']


@pytest.fixture
def mountinfo(tmp_path):
    path = tmp_path / 'mountinfo'
    path.write_text(MOUNTINFO)
    return str(path)


def refused(check, *args):
    with pytest.raises(exception.InvalidInput):
        check(*args)


def test_context_is_narrow():
    ctx = privileged.tgt_pctxt
    assert ctx.cfg_section == 'fuse_cinder_tgt_privileged'
    assert ctx.pypath == 'fuse_cinder.privileged.tgt_pctxt'
    from oslo_privsep import capabilities
    assert ctx.conf.capabilities == [capabilities.CAP_SYS_PTRACE]


def test_write_cache_mode_page_is_what_tgt_admin_sends():
    # tgt-admin's "write-cache off": mode page 8 with WCE cleared
    assert ptgt.WRITE_CACHE_OFF_MODE_PAGE == (
        '8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:'
        '0:0:0:0:0:0')


@pytest.mark.parametrize('port', [0, 60, 65535])
def test_ports(port):
    assert ptgt.check_port(port) == port


@pytest.mark.parametrize('port', [-1, 65536, 2 ** 64, 10 ** 100, True,
                                  False, '60', 60.0, None])
def test_hostile_ports(port):
    refused(ptgt.check_port, port)


@pytest.mark.parametrize('iqn', [
    IQN, 'iqn.2004-10.com.example.host:sub.x:volume-' + UUID,
    'eui.0123456789abcdef:volume-' + UUID,
    'naa.0123456789abcdef0123456789abcdef:volume-' + UUID])
def test_target_names(iqn):
    assert ptgt.check_iqn(iqn) == iqn


@pytest.mark.parametrize('iqn', COMMON_HOSTILE + [
    IQN + '\n', IQN + '\0', IQN + ' ', '\n' + IQN, IQN.upper(),
    IQN.replace(UUID, UUID.upper()), IQN.replace(UUID, UUID[:-1]),
    'iqn.2010-10.org.openstack:snapshot-' + UUID,
    'iqn.2010-10.org.openstack:volume-' + UUID + ':x',
    'iqn.2010-10.org.openstack;id:volume-' + UUID,
    'iqn.2010-10.org.openstack:$(reboot):volume-' + UUID,
    'iqn.2010-10.org.open stack:volume-' + UUID,
    'iqn.2010-10.org.openstack,x=y:volume-' + UUID,
    'iqn.2010-10.org.openstack:volume-' + UUID + ',targetname=x',
    'iqn.2010-10.' + 'a' * 200 + ':volume-' + UUID,
    'foo.2010-10.org:volume-' + UUID, 'volume-' + UUID])
def test_hostile_target_names(iqn):
    refused(ptgt.check_iqn, iqn)


def test_fuse_paths(mountinfo):
    assert ptgt.check_path(PATH, mountinfo) == PATH
    spaced = '/mnt/with space/volume-' + UUID
    refused(ptgt.check_path, spaced, mountinfo)  # space: not our charset


@pytest.mark.parametrize('path', COMMON_HOSTILE + [
    PATH + '\n', PATH + '\0', '\n' + PATH, PATH.upper(),
    PATH.replace(UUID, UUID.upper()), 'volume-' + UUID,
    'mnt/cdmi/volumes/volume-' + UUID, '/mnt/cdmi/volumes/../volume-' + UUID,
    '/mnt/cdmi/volumes/./volume-' + UUID,
    '/mnt/cdmi//volumes/volume-' + UUID, '/mnt/cdmi/volumes/volume-' + UUID
    + '/', '/etc/shadow', '/mnt/cdmi/volumes/shadow',
    '/mnt/cdmi/volumes/volume-' + UUID + '.tmp',
    '/mnt/cdmi/volumes/$(id)/volume-' + UUID,
    '/mnt/cdmi/vol;umes/volume-' + UUID,
    '/mnt/cdmi/vol,umes/volume-' + UUID,
    '/mnt/cdmi/vol=umes/volume-' + UUID,
    '/mnt/cdmi/' + 'a/' * 2100 + 'volume-' + UUID,
    '/srv/volumes/volume-' + UUID,
    '/mnt/cdmi/volumes/etc/volume-' + UUID,
    '/mnt/cdmi/volumes/volume-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'])
def test_hostile_paths(path, mountinfo):
    refused(ptgt.check_path, path, mountinfo)


@pytest.mark.parametrize('names', [[], ['iqn.1994-05.com.redhat:abc'],
                                   ('iqn.1994-05.com.redhat:abc',
                                    'eui.0123456789ABCDEF')])
def test_initiators(names):
    assert ptgt.check_initiators(names) == tuple(names)


@pytest.mark.parametrize('names', [
    None, 'iqn.1994-05.com.redhat:abc', {'iqn.1994-05.com.redhat:abc'},
    [None], [1], [True], [b'iqn.1994-05.com.redhat:abc'],
    ['iqn.1994-05.com.redhat:abc\n'], ['iqn.1994-05.com.redhat:abc\0'],
    ['iqn.1994-05.com.redhat:a,b'], ['iqn.1994-05.com.redhat:a=b'],
    ['iqn.1994-05.com.redhat:a b'], ['iqn.1994-05.com.redhat:$(id)'],
    ['iqn.1994-05.com.redhat:' + 'a' * 220], ['ALL'], ['0.0.0.0/0'],
    ['iqn.1994-05.com.redhat:a', 'iqn.1994-05.com.redhat:a'],
    ['iqn.1994-05.com.redhat:%d' % i for i in range(65)]])
def test_hostile_initiators(names):
    refused(ptgt.check_initiators, names)


@pytest.mark.parametrize('user,secret', [
    (None, 'secret'), ('user', None), (1, 'secret'), ('user', 1),
    (True, 'secret'), ('user', b'secret'), ('', 'secret'), ('user', ''),
    ('user\n', 'secret'), ('user', 'secret\n'), ('us,er', 'secret'),
    ('user', 'sec,ret'), ('user', 'sec=ret'), ('user', 'sec\0ret'),
    ('user', 'sec ret'), ('u' * 256, 'secret'), ('user', 's' * 256),
    ('user', '$(reboot)')])
def test_hostile_chap(user, secret):
    with pytest.raises(exception.InvalidInput) as err:
        ptgt.check_chap(user, secret)
    if isinstance(secret, str) and len(secret) > 2:
        assert secret not in str(err.value)


@pytest.mark.parametrize('flags', [None, True, 1, 'direct,sync', 'sync:direct',
                                   'direct\n', 'DIRECT', 'rw', ' direct'])
def test_hostile_bsoflags(flags):
    refused(ptgt.check_bsoflags, flags)


@pytest.mark.parametrize('serial', COMMON_HOSTILE + [
    SERIAL + '\n', SERIAL.upper(), SERIAL[:-1], SERIAL + '0', UUID,
    SERIAL[:-1] + 'g'])
def test_hostile_serials(serial):
    refused(ptgt.check_serial, serial)


@pytest.mark.parametrize('value', [0, 1, None, 'False', ''])
def test_flags_must_be_bools(value):
    refused(ptgt.check_flag, value, 'readonly')


def target(name=IQN, luns=None):
    return tgtd_mgmt.Target(tid=1, name=name, luns=luns or {})


@pytest.mark.parametrize('candidate,ours', [
    (target(), True),
    (target(luns={0: tgtd_mgmt.Lun(), 1: tgtd_mgmt.Lun(path=PATH)}), True),
    (target(luns={1: tgtd_mgmt.Lun(path=None)}), False),
    (target(luns={1: tgtd_mgmt.Lun(path='/etc/shadow')}), False),
    (target(luns={1: tgtd_mgmt.Lun(path=PATH),
                  2: tgtd_mgmt.Lun(path=PATH)}), False),
    (target(name='iqn.2003-01.org.example:backup'), False),
    (target(name=IQN + 'x'), False)])
def test_which_targets_are_ours(candidate, ours):
    assert ptgt.is_ours(candidate) is ours


def test_reopen_lun_waits_for_a_busy_lun(mountinfo):
    """tgtd refuses to delete a LUN with commands in flight; they drain."""
    client = mock.Mock()
    client.show_targets.return_value = (
        'Target 1: %s\n    LUN information:\n        LUN: 0\n'
        '        LUN: 1\n            Backing store path: %s\n' % (IQN, PATH))
    client.peer.return_value = (123, 0, 0)
    busy = tgtd_mgmt.TgtdError('this logical unit is still active',
                               tgtd_mgmt.LUN_ACTIVE)
    client.delete_lun.side_effect = [busy, busy, None]
    privileged.tgt_pctxt.set_client_mode(False)
    tgt_view._VIEWS.clear()
    try:
        with mock.patch.object(ptgt, '_client', return_value=client), \
                mock.patch.object(ptgt, 'check_path', return_value=PATH), \
                mock.patch.object(ptgt, '_add_lun') as add_lun, \
                mock.patch('time.sleep') as sleep:
            ptgt.reopen_lun(60, IQN, PATH, 'direct', True, SERIAL)
    finally:
        privileged.tgt_pctxt.set_client_mode(True)
        tgt_view._VIEWS.clear()
    assert sleep.call_count == 2 and client.delete_lun.call_count == 3
    add_lun.assert_called_once_with(client, 123, mock.ANY, mock.ANY, PATH,
                                    'direct', True, SERIAL, False)
    assert add_lun.call_args[0][3].tid == 1


GOOD_SESSION = {'MaxRecvDataSegmentLength': 262144,
                'MaxBurstLength': 262144, 'FirstBurstLength': 65536,
                'ImmediateData': 'Yes', 'InitialR2T': 'No'}


def test_session_params():
    assert ptgt.check_session_params(GOOD_SESSION) == GOOD_SESSION
    assert ptgt.check_session_params({}) == {}
    assert ptgt.check_session_params({'MaxRecvDataSegmentLength': 512,
                                      'FirstBurstLength': 16777215,
                                      'MaxBurstLength': 16777215})


@pytest.mark.parametrize('params', [
    None, [], [('InitialR2T', 'No')], 'InitialR2T=No',
    {'MaxOutstandingR2T': 2}, {'HeaderDigest': 'CRC32C'},
    {'maxrecvdatasegmentlength': 65536}, {1: 65536},
    {'MaxRecvDataSegmentLength': 511},
    {'MaxRecvDataSegmentLength': 16777216},
    {'MaxRecvDataSegmentLength': '262144'},
    {'MaxRecvDataSegmentLength': True},
    {'MaxRecvDataSegmentLength': 262144.0},
    {'MaxRecvDataSegmentLength': '262144\nMaxBurstLength=1'},
    {'ImmediateData': True}, {'ImmediateData': 'yes'},
    {'InitialR2T': 'No\n'}, {'InitialR2T': 'No,ImmediateData=No'},
    # RFC 7143: FirstBurstLength <= MaxBurstLength (tgtd's is 262144).
    {'FirstBurstLength': 524288, 'MaxBurstLength': 262144},
    {'FirstBurstLength': 524288}])
def test_hostile_session_params(params):
    refused(ptgt.check_session_params, params)


def _run_export(client, **kwargs):
    """export_target in this process against a mock tgtd client."""
    privileged.tgt_pctxt.set_client_mode(False)
    tgt_view._VIEWS.clear()
    try:
        with mock.patch.object(ptgt, '_client', return_value=client), \
                mock.patch.object(ptgt, 'check_path', return_value=PATH), \
                mock.patch.object(ptgt, '_add_lun') as add_lun:
            client.attach_mock(add_lun, 'add_lun')
            return ptgt.export_target(60, IQN, PATH, 'user01', 'secret0123',
                                      [], 'direct', True, SERIAL, **kwargs)
    finally:
        privileged.tgt_pctxt.set_client_mode(True)
        tgt_view._VIEWS.clear()


def _steps(client):
    return [c[0] for c in client.mock_calls
            if c[0] not in ('peer', 'control_port')]


def test_export_sets_session_params_before_the_lun_and_the_acl():
    """New sessions only see them: set before any initiator is let in."""
    client = mock.Mock(control_port=60)
    client.peer.return_value = (123, 0, 0)
    tid = _run_export(client, session_params=GOOD_SESSION)
    updates = [c for c in client.mock_calls if c[0] == 'update_target']
    assert sorted(c[1][1:] for c in updates) == sorted(GOOD_SESSION.items())
    assert all(c[1][0] == tid for c in updates)
    assert _steps(client) == (
        ['new_target'] + ['update_target'] * len(GOOD_SESSION)
        + ['add_lun', 'new_account', 'bind_account',
           'bind_initiator_address'])


def test_export_without_session_params_keeps_tgtds_defaults():
    client = mock.Mock(control_port=60)
    client.peer.return_value = (123, 0, 0)
    _run_export(client)
    assert 'update_target' not in _steps(client)


def test_a_refused_session_param_rolls_the_target_back():
    client = mock.Mock(control_port=60)
    client.peer.return_value = (123, 0, 0)
    client.update_target.side_effect = tgtd_mgmt.TgtdError('bad', 22)
    with pytest.raises(tgtd_mgmt.TgtdError):
        _run_export(client, session_params=GOOD_SESSION)
    assert _steps(client) == ['new_target', 'update_target',
                              'delete_target']


def test_hostile_session_params_reach_no_tgtd():
    client = mock.Mock(control_port=60)
    client.peer.return_value = (123, 0, 0)
    with pytest.raises(exception.InvalidInput):
        _run_export(client, session_params={'MaxOutstandingR2T': 8})
    assert _steps(client) == []


@pytest.mark.parametrize('bsoflags', ptgt.BSOFLAGS)
def test_every_lun_uses_the_rdwr_backing_store(bsoflags):
    """rdwr calls fdatasync on SYNCHRONIZE CACHE; aio never does."""
    client = mock.Mock()
    view = mock.Mock()
    with mock.patch.object(ptgt, '_OpenCheck') as check:
        check.return_value.opened.return_value = 7
        ptgt._add_lun(client, 123, view, target(), PATH, bsoflags, True,
                      SERIAL, False)
    client.new_lun.assert_called_once_with(1, ptgt.LUN, PATH, bstype='rdwr',
                                           bsoflags=bsoflags)


# -- the check of the file a new LUN opened, on a real process's fds ------

OPENER = """
import os, sys
print('ready', flush=True)
for line in sys.stdin:
    op, arg = line.split(' ', 1)
    if op == 'open':
        print(os.open(arg.strip(), os.O_RDONLY | os.O_CREAT), flush=True)
    else:
        os.close(int(arg))
        print('closed', flush=True)
"""


class Opener(object):
    """A child process standing for tgtd: it opens files when asked."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, '-c', OPENER],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        # Listed before it is ready, the interpreter's start-up files
        # would count as its descriptors.
        assert self.proc.stdout.readline().strip() == 'ready'

    def _ask(self, line):
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def open(self, path):
        return int(self._ask('open ' + str(path)))

    def close(self, fd):
        self._ask('close %d' % fd)

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait()


@pytest.fixture
def opener(monkeypatch):
    """(process, view, listings): _OpenCheck on a child process.

    Every file counts as on FUSE: the tests are about which descriptors
    are new.
    """
    monkeypatch.setattr(ptgt, '_on_fuse', lambda pid, fds: bool(fds))
    listings = []
    real = ptgt._fd_numbers
    monkeypatch.setattr(ptgt, '_fd_numbers',
                        lambda pid: listings.append(pid) or real(pid))
    proc = Opener()
    view = tgt_view.TgtdView()
    view.check_pid(proc.pid)
    yield proc, view, listings
    proc.stop()


def test_quick_check_reads_no_listing_once_it_has_a_hint(opener, tmp_path):
    proc, view, listings = opener
    for n in range(3):
        path = str(tmp_path / ('volume-%d' % n))
        check = ptgt._OpenCheck(proc.pid, path, view, False)
        fd = proc.open(path)
        assert check.opened() == fd
        view.lun_opened('t%d' % n, fd)
        if n == 1:
            proc.close(fd)
            view.lun_closed('t%d' % n)
    assert listings == [proc.pid]


def test_a_descriptor_open_before_the_request_does_not_count(opener,
                                                             tmp_path):
    proc, view, listings = opener
    path = str(tmp_path / 'volume-1')
    proc.open(path)
    for full in (False, True):
        check = ptgt._OpenCheck(proc.pid, path, view, full)
        assert check.opened() is None


def test_a_number_reused_for_the_file_counts(opener, tmp_path):
    """The old LUN's file still closing when the check starts."""
    proc, view, listings = opener
    view.learn_fds(ptgt._fd_numbers(proc.pid))
    old = proc.open(tmp_path / 'volume-old')
    path = str(tmp_path / 'volume-new')
    check = ptgt._OpenCheck(proc.pid, path, view, False)
    proc.close(old)
    assert proc.open(path) == old
    assert check.opened() == old


def test_a_file_reached_through_a_symlink_does_not_count(opener, tmp_path):
    proc, view, listings = opener
    path = str(tmp_path / 'volume-1')
    os.symlink(str(tmp_path / 'elsewhere'), path)
    for full in (False, True):
        check = ptgt._OpenCheck(proc.pid, path, view, full)
        proc.open(path)
        assert check.opened() is None


def test_a_file_on_an_unhinted_number_is_missed_by_the_quick_form_only(
        opener, tmp_path):
    proc, view, listings = opener
    view.learn_fds(ptgt._fd_numbers(proc.pid))
    hinted = view.free_fds(ptgt.FD_CANDIDATES)
    path = str(tmp_path / 'volume-1')
    quick = ptgt._OpenCheck(proc.pid, path, view, False)
    full = ptgt._OpenCheck(proc.pid, path, view, True)
    # Something else takes every hinted number meanwhile.
    for n in hinted:
        proc.open(tmp_path / ('other-%d' % n))
    fd = proc.open(path)
    assert fd not in hinted
    assert quick.opened() is None
    assert full.opened() == fd
