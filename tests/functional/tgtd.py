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
"""A private tgtd on 127.0.0.1 for functional tests, always stopped.

Usage::

    with tgtd.Tgtd() as daemon:             # or Tgtd(21, 13261)
        ...    # tgtadm -C daemon.control_port, iscsi://daemon.portal

or the ``make_tgtd`` pytest fixture factory. Several test suites run at
once on one machine, so ports are picked among ours (control ports 21-29,
portals 127.0.0.1:13261-13269) unless given, and a daemon that did not get
exactly its own portal is stopped: when its portal is taken, tgtd quietly
listens on 0.0.0.0:3260 instead. The default tgtd is never touched.
"""

import os

import pytest

from fuse_cinder.allinone import sandbox

CONTROL_PORTS = range(21, 30)
PORTAL_PORTS = range(13261, 13270)


def requirements(*extra):
    """pytest marks skipping a module that lacks root or programs.

    CI installs every program (bindep.txt), so these only skip on a
    developer machine that has not run tools/run.
    """
    missing = sandbox.missing_programs(*(sandbox.TGT_BINARIES + extra))
    return [
        pytest.mark.skipif(bool(missing), reason='not installed: %s'
                           % ', '.join(missing)),
        pytest.mark.skipif(os.geteuid() != 0,
                           reason='needs root for FUSE and tgtd'),
    ]


class Tgtd(sandbox.Tgtd):
    """The launcher's private tgtd, claimed by a test, with test helpers.

    A subclass may claim other port ranges (the benchmark does), so that
    it never competes with the test suites for ports.
    """

    control_ports = CONTROL_PORTS
    portal_ports = PORTAL_PORTS

    def __init__(self, control_port=None, portal_port=None, log_path=None):
        if (control_port is not None
                and control_port not in self.control_ports):
            raise ValueError('tgtd control port must be in %s'
                             % _span(self.control_ports))
        if portal_port is not None and portal_port not in self.portal_ports:
            raise ValueError('iSCSI portal port must be in %s'
                             % _span(self.portal_ports))
        super().__init__(control_port, portal_port, log_path=log_path,
                         control_ports=self.control_ports,
                         portal_ports=self.portal_ports)


def _span(ports):
    return '%d-%d' % (ports[0], ports[-1])


@pytest.fixture
def make_tgtd(tmp_path):
    """Factory: ``make_tgtd([control_port, portal_port])``, stopped after."""
    started = []

    def make(control_port=None, portal_port=None):
        daemon = Tgtd(control_port, portal_port, log_path=str(
            tmp_path / ('tgtd-%d.log' % len(started))))
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()
