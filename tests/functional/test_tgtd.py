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
"""The private tgtd helper other functional suites build on."""

import socket

import pytest

from tests.functional import tgtd

make_tgtd = tgtd.make_tgtd
pytestmark = tgtd.requirements()


def test_two_daemons_get_their_own_ports_and_stop(tmp_path):
    a = tgtd.Tgtd(log_path=str(tmp_path / 'a.log')).start()
    try:
        b = tgtd.Tgtd(log_path=str(tmp_path / 'b.log')).start()
        try:
            assert a.control_port != b.control_port
            assert a.portal != b.portal
            assert a.control_port in tgtd.CONTROL_PORTS
            assert b.portal_port in tgtd.PORTAL_PORTS
            assert 'Portal: %s,1' % b.portal in b.tgtadm(
                '--lld', 'iscsi', '--mode', 'portal', '--op', 'show')
        finally:
            b.stop()
        assert not b.running
    finally:
        a.stop()
    assert not a.running


def _hold_a_portal_port():
    for port in tgtd.PORTAL_PORTS:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(('127.0.0.1', port))
            sock.listen()
            return sock, port
        except OSError:
            sock.close()
    pytest.skip('every test portal port is in use')


def test_a_taken_portal_is_never_used(tmp_path):
    sock, port = _hold_a_portal_port()
    with sock:
        daemon = tgtd.Tgtd(portal_port=port,
                           log_path=str(tmp_path / 'tgtd.log'))
        with pytest.raises(RuntimeError):
            daemon.start()
        assert not daemon.running


def test_restart_keeps_the_ports(make_tgtd):
    daemon = make_tgtd()
    ports = (daemon.control_port, daemon.portal_port)
    daemon.tgtadm('--lld', 'iscsi', '--mode', 'target', '--op', 'new',
                  '--tid', '1', '--targetname', 'iqn.2010-10.org.test:x')
    daemon.restart()
    assert (daemon.control_port, daemon.portal_port) == ports
    assert daemon.show() == ''


def test_only_our_ports(tmp_path):
    with pytest.raises(ValueError):
        tgtd.Tgtd(control_port=0)
    with pytest.raises(ValueError):
        tgtd.Tgtd(portal_port=3260)
