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
"""Multi-attach: one target, two real initiators, one detach at a time.

First with the target helper driven as Cinder's volume manager drives
it, then through a live patched all-in-one Cinder and its v3 attachments
API, with a multiattach volume type. The initiators are libiscsi in
qemu-img and qemu-io, each with its own initiator name, on 127.0.0.1.

Ports: tgtd control 80-89, iSCSI portal 13321-13329, API 18790-18799.
"""

import os
import subprocess

import pytest

from cinder import context
from cinder import objects

from fuse_cinder.allinone import sandbox
from fuse_cinder.targets import tgt
from fuse_cinder.targets import tgtd_mgmt
from tests.functional import test_export_api as api_base
from tests.functional import test_tgt_export as base
from tests.functional import tgtd as tgtd_helper
from tests.functional import volumes

MiB = 1 << 20
CTX = context.get_admin_context()
VOL_ID = '00000007-0000-4000-8000-000000000077'
HOST1 = 'iqn.1994-05.com.redhat:fuse-cinder-multi1'
HOST2 = 'iqn.1994-05.com.redhat:fuse-cinder-multi2'
CONTROL_PORTS = range(80, 90)
PORTAL_PORTS = range(13321, 13330)
API_PORTS = range(18790, 18800)

objects.register_all()

pytestmark = tgtd_helper.requirements('bindfs', 'qemu-img', 'qemu-io',
                                      'iscsi-inq')


class Tgtd(tgtd_helper.Tgtd):
    """The shared private tgtd helper, on this suite's own ports."""

    control_ports = CONTROL_PORTS
    portal_ports = PORTAL_PORTS


class Session:
    """One qemu-io process: an initiator that stays logged in."""

    def __init__(self, initiator):
        self.proc = subprocess.Popen(
            ['qemu-io', '--object',
             'secret,id=sec0,file=%s' % initiator.secret_file,
             '--image-opts', initiator._opts(0, 64 * MiB)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)

    def run(self, *commands):
        """Run commands and quit; returns qemu-io's output."""
        out, _err = self.proc.communicate(
            ''.join(c + '\n' for c in commands) + 'quit\n', timeout=120)
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def daemon(tmp_path):
    d = Tgtd(log_path=str(tmp_path / 'tgtd.log')).start()
    yield d
    d.stop()


@pytest.fixture
def fuse(tmp_path):
    with sandbox.ScratchMount(tmp_path / 'fuse') as m:
        yield m


@pytest.fixture
def target(backend_conf, tmp_path, daemon, tgt_privsep_in_process):
    return tgt.TgtFileTarget(
        configuration=backend_conf(
            volumes_dir=str(tmp_path / 'targets'),
            fuse_tgt_control_port=daemon.control_port,
            target_ip_address='127.0.0.1', target_port=daemon.portal_port),
        db=sandbox.NoDB())


def attachments(vol, *hosts):
    """What Cinder lists with the volume: one attachment per host."""
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(CTX, id=base.IDS[i], volume_id=vol.id,
                                 attach_status='attached',
                                 connector={'initiator': host})
        for i, host in enumerate(hosts)])


def logged_in(daemon, initiator):
    """Whether tgtd lists a session (I_T nexus) of the initiator."""
    return any(line.strip().startswith('Initiator: %s ' % initiator)
               for line in daemon.show().splitlines())


def detach(target, vol, host, *remaining):
    """Delete host's attachment as Cinder's volume manager does.

    attachment_delete calls remove_export only when terminate_connection
    reports no shared connection; the legacy detach calls it anyway, so
    it is called in both cases here and must keep a shared target.
    """
    attachments(vol, host, *remaining)
    shared = target.terminate_connection(vol, {'initiator': host})
    assert shared is bool(remaining)
    target.remove_export(CTX, vol)


def test_two_initiators_share_one_target_until_the_last_detach(
        daemon, fuse, target, tmp_path):
    vol = volumes.volume(VOL_ID, size=1, status='in-use', multiattach=True)
    os.makedirs(fuse.volumes_home, exist_ok=True)
    with open(base.path_of(fuse, vol), 'wb') as f:
        f.truncate(64 * MiB)
    # Two attachments: create_export and initialize_connection for each.
    base.export(target, vol, fuse, connector={'initiator': HOST1})
    ini1 = base.attached(daemon, tmp_path, target, vol, name=HOST1)
    base.export(target, vol, fuse, connector={'initiator': HOST2})
    ini2 = base.attached(daemon, tmp_path, target, vol, name=HOST2)
    assert ini1.iqn == ini2.iqn
    iqn = ini1.iqn
    assert len(tgtd_mgmt.parse_targets(daemon.show())) == 1
    state = tgtd_mgmt.parse_targets(daemon.show())[iqn]
    assert sorted(state.acl) == ['0.0.0.0/32', HOST1, HOST2]

    # Each writes, and each reads what the other wrote.
    one, two = os.urandom(MiB), os.urandom(MiB)
    ini1.write(1 * MiB, one)
    ini2.write(8 * MiB, two)
    assert ini2.read(1 * MiB, MiB) == one
    assert ini1.read(8 * MiB, MiB) == two
    assert ini1.inquiry(name=base.STRANGER)[0] != 0

    # HOST2 stays logged in while HOST1 detaches.
    session = Session(ini2)
    try:
        api_base._wait(lambda: logged_in(daemon, HOST2), 30,
                       'a session of %s' % HOST2)
        detach(target, vol, HOST1, HOST2)
        state = tgtd_mgmt.parse_targets(daemon.show())[iqn]
        assert sorted(state.acl) == ['0.0.0.0/32', HOST2]
        assert state.luns[tgt.LUN].path == base.path_of(fuse, vol)
        assert ini1.inquiry()[0] != 0               # HOST1 is refused
        assert logged_in(daemon, HOST2)             # the session stayed
        out = session.run('read -P 0 0 64k', 'write -P 0x77 0 64k',
                          'read -P 0x77 0 64k')
        assert 'Pattern verification failed' not in out, out
        assert out.count('64 KiB') == 3, out
    finally:
        session.close()
    assert ini2.read(0, 64 * 1024) == b'\x77' * 64 * 1024
    assert ini2.read(1 * MiB, MiB) == one
    assert base.read_file(base.path_of(fuse, vol), 0, 64 * 1024) == (
        b'\x77' * 64 * 1024)
    user = ini2.user
    assert user in sandbox.list_accounts(daemon.control_port)

    # The last one goes: target, CHAP account and config file with it.
    detach(target, vol, HOST2)
    assert iqn not in daemon.show()
    assert user not in sandbox.list_accounts(daemon.control_port)
    assert not os.path.exists(target._conf_path(iqn))
    assert ini2.inquiry()[0] != 0
    assert base.read_file(base.path_of(fuse, vol), 8 * MiB, MiB) == two


# -- through Cinder's v3 attachments API ---------------------------------

#: attachment_create with a connector and a mode (3.54), complete (3.44).
ATTACH_MV = '3.54'


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    return api_base.patched_cinder.patched_copy(
        tmp_path_factory.mktemp('cinder'))


@pytest.fixture
def real_cinder(site, tmp_path):
    missing = api_base._real_driver_missing()
    if missing:
        pytest.skip(missing)
    with sandbox.ScratchMount(tmp_path / 'fuse') as mount:
        daemon = Tgtd(log_path=str(tmp_path / 'tgtd.log')).start()
        os.makedirs(mount.volumes_home, exist_ok=True)
        aio = api_base.AllInOne(site, tmp_path / 'state',
                                api_base.REAL_DRIVER, [
                                    'volumes_home=%s' % mount.volumes_home,
                                    'fuse_tgt_control_port=%d'
                                    % daemon.control_port,
                                    'target_port=%d' % daemon.portal_port,
                                    'target_ip_address=127.0.0.1',
                                ], port=api_base._free_port(API_PORTS))
        try:
            aio.start()
            yield aio, daemon, mount
        finally:
            aio.stop()
            daemon.stop()


def _connector(host):
    return {'initiator': host, 'host': host.rsplit(':', 1)[-1],
            'ip': '127.0.0.1', 'platform': 'x86_64', 'os_type': 'linux',
            'multipath': False, 'mountpoint': '/dev/vdb'}


def _attach(aio, vol_id, host):
    """attachment_create with the connector, then complete it.

    No instance: Cinder would ask Nova before deleting an attachment of
    one (bug #2004555), and there is no Nova here.
    """
    code, body = aio.http('POST', '/attachments', {'attachment': {
        'volume_uuid': vol_id,
        'connector': _connector(host), 'mode': 'rw'}},
        microversion=ATTACH_MV)
    assert code == 200, (body, aio.log_tail())
    attachment = body['attachment']
    code, body = aio.http('POST', '/attachments/%s/action' % attachment['id'],
                          {'os-complete': None}, microversion=ATTACH_MV)
    assert code == 204, body
    return attachment['id'], attachment['connection_info']


def _initiator(daemon, tmp_path, info, host):
    assert info['driver_volume_type'] == 'iscsi' or 'target_iqn' in info
    assert info['target_portal'] == daemon.portal
    assert info['target_lun'] == 1
    workdir = tmp_path / host.rsplit(':', 1)[-1]
    workdir.mkdir()
    auth = '%s %s %s' % (info['auth_method'], info['auth_username'],
                         info['auth_password'])
    return base.Initiator(daemon, str(workdir), info['target_iqn'], auth,
                          name=host)


@api_base.patched_cinder.needs_cinder_cli
def test_multiattach_through_the_attachments_api(real_cinder, tmp_path):
    aio, daemon, mount = real_cinder
    code, body = aio.http('POST', '/types', {'volume_type': {
        'name': 'multiattach',
        'extra_specs': {'multiattach': '<is> True'}}})
    assert code == 200, body
    type_id = body['volume_type']['id']
    code, body = aio.http('POST', '/volumes', {'volume': {
        'size': 1, 'name': 'shared', 'volume_type': 'multiattach'}},
        microversion='3.50')
    assert code == 202, body
    vol_id = body['volume']['id']
    try:
        aio.wait_status(vol_id, 'available')
    except AssertionError as err:
        # what Cinder tells the user (e.g. no backend passed the filters)
        raise AssertionError('%s\nuser messages: %s' % (
            err, aio.http('GET', '/messages', microversion='3.3')[1]))
    code, body = aio.http('GET', '/volumes/%s' % vol_id,
                          microversion='3.50')
    assert body['volume']['multiattach'] is True

    a1, info1 = _attach(aio, vol_id, HOST1)
    a2, info2 = _attach(aio, vol_id, HOST2)
    assert aio.status(vol_id) == 'in-use'
    # one target, both initiators on its ACL, one CHAP account
    assert info1['target_iqn'] == info2['target_iqn']
    iqn = info1['target_iqn']
    assert list(daemon.targets()) == [iqn]
    state = tgtd_mgmt.parse_targets(daemon.show())[iqn]
    assert sorted(state.acl) == ['0.0.0.0/32', HOST1, HOST2]
    accounts = sandbox.list_accounts(daemon.control_port)
    assert accounts == [info1['auth_username']]

    ini1 = _initiator(daemon, tmp_path, info1, HOST1)
    ini2 = _initiator(daemon, tmp_path, info2, HOST2)
    one, two = os.urandom(MiB), os.urandom(MiB)
    ini1.write(2 * MiB, one)
    ini2.write(9 * MiB, two)
    assert ini2.read(2 * MiB, MiB) == one
    assert ini1.read(9 * MiB, MiB) == two
    assert ini1.inquiry(name=base.STRANGER)[0] != 0

    # The first attachment goes: HOST1 is refused, HOST2 keeps working.
    code, body = aio.http('DELETE', '/attachments/%s' % a1,
                          microversion=ATTACH_MV)
    assert code == 200, body
    assert aio.status(vol_id) == 'in-use'
    assert list(daemon.targets()) == [iqn]
    state = tgtd_mgmt.parse_targets(daemon.show())[iqn]
    assert sorted(state.acl) == ['0.0.0.0/32', HOST2]
    assert ini1.inquiry()[0] != 0
    assert ini1.read(2 * MiB, MiB) is None
    more = os.urandom(MiB)
    ini2.write(20 * MiB, more)
    assert ini2.read(20 * MiB, MiB) == more
    assert ini2.read(2 * MiB, MiB) == one
    assert sandbox.list_accounts(daemon.control_port) == accounts

    # The last one goes: no target, no account; the data stays.
    code, body = aio.http('DELETE', '/attachments/%s' % a2,
                          microversion=ATTACH_MV)
    assert code == 200, body
    aio.wait_status(vol_id, 'available')
    assert daemon.targets() == {}
    assert sandbox.list_accounts(daemon.control_port) == []
    assert ini2.inquiry()[0] != 0
    backing = api_base._backing_file(mount, vol_id)
    assert base.read_file(backing, 9 * MiB, MiB) == two
    assert base.read_file(backing, 20 * MiB, MiB) == more
    # Removed once, by the last delete (not removed and made again).
    with open(aio.log) as f:
        assert f.read().count('Removed target %s.' % iqn) == 1
    aio.delete(vol_id)
    code, body = aio.http('DELETE', '/types/%s' % type_id)
    assert code == 202, body
