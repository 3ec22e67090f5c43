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
"""tgtd_mgmt against the struct layout and a fake in-process tgtd."""

import os
import socket
import struct
import threading
import time

import pytest

from fuse_cinder.targets import tgtd_mgmt as mgmt

# sizeof(struct tgtadm_req) in tgt 1.0.85, as its tgtadm writes it.
HEADER_SIZE = 120


class FakeTgtd:
    """An abstract AF_UNIX socket answering like tgtd, one request each.

    ``answer(header, params)`` returns (err, text) or None to hang, or
    'close' to drop the connection as tgtd does for a non-root peer.
    """

    def __init__(self, answer):
        self.answer = answer
        self.address = b'\0fuse-cinder-test-tgtd-%d-%d' % (
            os.getpid(), id(self))
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.address)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop_event.is_set():
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                header = conn.recv(HEADER_SIZE, socket.MSG_WAITALL)
                length = struct.unpack_from('=I', header, 72)[0]
                params = conn.recv(length - HEADER_SIZE, socket.MSG_WAITALL) \
                    if length > HEADER_SIZE else b''
                self.requests.append((header, params))
                reply = self.answer(header, params)
                if reply == 'close':
                    continue
                if reply is None:
                    self.stop_event.wait(5)
                    continue
                err, text = reply
                body = text.encode() + b'\0' if text else b''
                conn.sendall(struct.pack('=II', err, 8 + len(body)) + body)

    def client(self, timeout=2.0):
        return mgmt.TgtdClient(60, timeout=timeout, address=self.address)

    def close(self):
        self.stop_event.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def fake():
    servers = []

    def make(answer):
        server = FakeTgtd(answer)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.close()


def fields(header):
    mode, op, lld, length, tid, sid, lun, cid, host, dtype, acdir, pack, \
        force = mgmt.REQUEST.unpack(header)
    return dict(mode=mode, op=op, lld=lld.rstrip(b'\0'), len=length,
                tid=tid, lun=lun, force=force, acdir=acdir)


def test_header_layout_matches_tgtadm_1_0_85():
    assert mgmt.REQUEST.size == HEADER_SIZE
    assert mgmt.RESPONSE.size == 8
    params = mgmt.encode_params([('targetname', 'iqn.x:volume-a')])
    data = mgmt.encode_request(mgmt.MODE_TARGET, mgmt.OP_NEW, params, tid=1)
    # Bytes tgtadm wrote: mode 1, op 0, "iscsi", len, tid 1, sid 0, lun ~0.
    assert data[:8] == b'\1\0\0\0\0\0\0\0'
    assert data[8:72] == b'iscsi' + b'\0' * 59
    assert struct.unpack_from('=Ii', data, 72) == (len(data), 1)
    assert data[80:88] == b'\0' * 8
    assert data[88:96] == b'\xff' * 8
    assert data[96:120] == b'\0' * 24
    assert data[120:] == b'targetname=iqn.x:volume-a\0'


def test_requests_as_tgtadm_sends_them(fake):
    server = fake(lambda header, params: (0, ''))
    client = server.client()
    client.new_lun(3, 1, '/m/volume-x', bsoflags='direct')
    client.update_lun(3, 1, 'scsi_id=a,scsi_sn=a')
    client.new_account('u', 's')
    client.bind_account(3, 'u')
    client.bind_initiator_address(3, 'ALL')
    client.unbind_initiator_name(3, 'iqn.1994-05.com.redhat:h')
    client.update_target(3, 'MaxRecvDataSegmentLength', 65536)
    client.delete_target(3, force=True)
    got = [(fields(h), p) for h, p in server.requests]
    assert [(f['mode'], f['op'], f['tid']) for f, _p in got] == [
        (2, 0, 3), (2, 5, 3), (7, 0, -1), (7, 3, 3), (1, 3, 3), (1, 4, 3),
        (1, 5, 3), (1, 1, 3)]
    assert [p for _f, p in got] == [
        b'path=/m/volume-x,bstype=rdwr,bsoflags=direct\0',
        b'targetOps scsi_id=a,scsi_sn=a,\0',
        b'user=u,password=s\0', b'user=u\0', b'initiator-address=ALL\0',
        b'initiator-name=iqn.1994-05.com.redhat:h\0',
        b'MaxRecvDataSegmentLength=65536\0', b'']
    assert got[0][0]['lun'] == 1 and got[2][0]['lun'] == mgmt.NO_LUN_GIVEN
    assert got[-1][0]['force'] == 1 and got[-1][0]['len'] == HEADER_SIZE
    assert all(f['lld'] == b'iscsi' for f, _p in got)


def test_show_returns_the_text_tgtadm_prints(fake):
    text = ('Target 7: iqn.2010-10.org.openstack:volume-a\n'
            '    System information:\n        Driver: iscsi\n'
            '    LUN information:\n        LUN: 1\n'
            '            SCSI SN: beef\n'
            '            Backing store path: /m/volume-a\n'
            '            Backing store flags: sync:direct\n'
            '    Account information:\n        user1\n'
            '    ACL information:\n        0.0.0.0/32\n'
            '        iqn.1994-05.com.redhat:h\n')
    server = fake(lambda header, params: (0, text * 50))
    shown = server.client().show_targets()
    assert shown == text * 50
    target = mgmt.parse_targets(text)['iqn.2010-10.org.openstack:volume-a']
    assert target.tid == 7 and target.luns[1].path == '/m/volume-a'
    assert target.accounts == ['user1']
    assert target.luns[1].bsoflags == 'sync:direct'
    assert target.acl == ['0.0.0.0/32', 'iqn.1994-05.com.redhat:h']


@pytest.mark.parametrize('code', range(1, len(mgmt.MESSAGES)))
def test_errors_carry_code_and_tgtadm_text(fake, code):
    server = fake(lambda header, params: (code, ''))
    with pytest.raises(mgmt.TgtdError) as err:
        server.client().new_account('someone', 'TOPSECRET')
    assert err.value.code == code
    assert mgmt.MESSAGES[code] in str(err.value)
    assert 'TOPSECRET' not in str(err.value) + repr(err.value.args)
    assert not isinstance(err.value, mgmt.TgtdUnavailable)
    # Rebuildable from its args, as oslo.privsep does across the channel.
    again = type(err.value)(*err.value.args)
    assert (again.code, str(again)) == (code, str(err.value))


def test_unknown_code_gets_tgtadm_fallback_text():
    assert mgmt.message_for(99) == '(unknown tgtadm_errno)'


def test_a_hung_tgtd_times_out(fake):
    server = fake(lambda header, params: None)
    start = time.monotonic()
    with pytest.raises(mgmt.TgtdTimeout):
        server.client(timeout=0.3).show_targets()
    assert time.monotonic() - start < 2


def test_a_dropped_connection_is_unavailable(fake):
    server = fake(lambda header, params: 'close')
    with pytest.raises(mgmt.TgtdUnavailable) as err:
        server.client().show_targets()
    assert not isinstance(err.value, mgmt.TgtdTimeout)


def test_no_tgtd_is_unavailable():
    client = mgmt.TgtdClient(60, address=b'\0fuse-cinder-no-such-tgtd')
    with pytest.raises(mgmt.TgtdUnavailable):
        client.show_targets()


def test_peer_pid_is_the_serving_process(fake):
    server = fake(lambda header, params: (0, ''))
    expected = (os.getpid(), os.getuid(), os.getgid())
    assert server.client().peer() == expected


@pytest.mark.parametrize('value', ['a,b', 'a\0b'])
def test_values_tgtd_would_misread_are_refused(fake, value):
    server = fake(lambda header, params: (0, ''))
    with pytest.raises(ValueError):
        server.client().bind_initiator_name(1, value)
    assert server.requests == []


def test_oversized_parameters_are_refused():
    with pytest.raises(ValueError):
        mgmt.encode_params([('path', 'x' * mgmt.MAX_PARAMS)])


def test_accounts_parse():
    assert mgmt.parse_accounts('Account list:\n    u1\n    u2\n') == [
        'u1', 'u2']
