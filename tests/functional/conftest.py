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
"""Fixtures for the functional suites: real FUSE mounts, fault figures."""

import collections

from eventlet import patcher
import pytest

from fuse_cinder.allinone import faultfs
from fuse_cinder import privileged


@pytest.fixture(autouse=True, scope='session')
def real_threads():
    """Fail the run if anything monkey-patched this process with eventlet.

    Tests run calls that may block on a FUSE mount in threads; green
    threads would let one blocked call stall the whole run. Importing
    cinder.tests.unit does such patching.
    """
    yield
    assert not patcher.is_monkey_patched('thread'), (
        'the functional suite must not import cinder.tests.unit')


@pytest.fixture
def tgt_privsep_in_process():
    """Run the privileged tgt entry points in this (root) process.

    For tests that build the driver or its target helper in-process:
    otherwise the first call starts a privsep daemon through 'sudo
    privsep-helper', which a test machine need not allow and which would
    import the installed fuse_cinder rather than this checkout. The
    entry points are the same code either way; test_tgtd_privsep.py and
    test_unprivileged.py run them in the real daemon.
    """
    privileged.tgt_pctxt.set_client_mode(False)
    try:
        yield
    finally:
        privileged.tgt_pctxt.set_client_mode(True)


# (test name, Counter) of every test that used the ``figures`` fixture.
_FIGURES = []
# The figures that add up across tests; others (peaks, seconds) do not.
_SUMMED = ('faults', 'ops', 'verified_bytes')


@pytest.fixture
def make_fs(tmp_path, request):
    """Mount a FaultFS over tmp_path/backing; unmounted whatever happens."""
    def make(**kwargs):
        backing = tmp_path / 'backing'
        backing.mkdir()
        handle = faultfs.FaultFS(str(backing), str(tmp_path / 'mnt'),
                                 log_path=str(tmp_path / 'faultfs.log'),
                                 **kwargs)
        request.addfinalizer(handle.stop)  # before start: a failed start too
        handle.start()
        return handle
    return make


@pytest.fixture
def fs(make_fs):
    return make_fs()


@pytest.fixture
def figures(request):
    """Counters of a fault test (faults, ops, verified_bytes, ...).

    They are printed as one ``RELIABILITY`` line per test and summed at
    the end of the run, so CI output shows what was actually tried.
    """
    counts = collections.Counter()
    yield counts
    _FIGURES.append((request.node.name, counts))


def _figures_line(counts):
    return ', '.join('%s=%s' % item for item in sorted(counts.items()))


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section('reliability figures')
    total = collections.Counter()
    for name, counts in _FIGURES:
        total.update({key: counts[key] for key in _SUMMED})
        terminalreporter.write_line('RELIABILITY %s: %s'
                                    % (name, _figures_line(counts)))
    terminalreporter.write_line('RELIABILITY total (%d tests): %s'
                                % (len(_FIGURES), _figures_line(total)))
