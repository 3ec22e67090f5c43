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

import subprocess

from oslo_concurrency import processutils
import pytest

import cinder.tests.unit  # noqa: F401  (eventlet monkey patching, as Cinder)

from fuse_cinder import processes


def test_real_executor_timeout_is_recognised_under_eventlet():
    with pytest.raises(Exception) as err:
        processutils.execute('sleep', '5', timeout=0.2)
    # This is the case the helper exists for: not the stdlib class.
    assert not isinstance(err.value, subprocess.TimeoutExpired)
    assert processes.is_timeout_expired(err.value)


def test_other_failures_are_not_timeouts():
    assert processes.is_timeout_expired(subprocess.TimeoutExpired('x', 1))
    assert not processes.is_timeout_expired(ValueError('TimeoutExpired'))
    assert not processes.is_timeout_expired(
        processutils.ProcessExecutionError(exit_code=124))


# -- the driver's executor ------------------------------------------------

def test_execute_returns_both_streams_and_feeds_input():
    out, err = processes.execute('sh', '-c', 'cat; echo oops >&2',
                                 process_input=b'in\n')
    assert (out, err) == ('in\n', 'oops\n')


@pytest.mark.parametrize('check,raises', [
    (True, True), (False, False), (3, False), ([0, 1], True), ([3], False)])
def test_execute_checks_exit_codes_as_processutils(check, raises):
    cmd = ('sh', '-c', 'echo out; echo err >&2; exit 3')
    if raises:
        with pytest.raises(processutils.ProcessExecutionError) as err:
            processes.execute(*cmd, check_exit_code=check)
        assert err.value.exit_code == 3
        assert (err.value.stdout, err.value.stderr) == ('out\n', 'err\n')
        assert err.value.cmd == 'sh -c echo out; echo err >&2; exit 3'
    else:
        assert processes.execute(*cmd, check_exit_code=check) == (
            'out\n', 'err\n')


def test_execute_masks_passwords_in_errors():
    with pytest.raises(processutils.ProcessExecutionError) as err:
        processes.execute('sh', '-c', 'echo password=hunter2; exit 1')
    assert 'hunter2' not in err.value.stdout
    assert 'hunter2' not in str(err.value)


def test_execute_puts_the_root_helper_in_front_unless_root(monkeypatch):
    helper = 'env FUSE_CINDER_TEST_HELPER=1'
    monkeypatch.setattr('os.geteuid', lambda: 1000)
    out, _err = processes.execute('sh', '-c', 'echo $FUSE_CINDER_TEST_HELPER',
                                  run_as_root=True, root_helper=helper)
    assert out == '1\n'
    monkeypatch.setattr('os.geteuid', lambda: 0)
    out, _err = processes.execute('sh', '-c', 'echo $FUSE_CINDER_TEST_HELPER',
                                  run_as_root=True, root_helper=helper)
    assert out == '\n'


def test_execute_spawns_without_preexec_fn(monkeypatch):
    """No preexec_fn, so CPython may vfork instead of forking the service."""
    seen = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, 'Popen', popen)
    processes.execute('true')
    assert seen and 'preexec_fn' not in seen[0]
    assert seen[0].get('restore_signals', True)  # SIGPIPE back to default
    out, _err = processes.execute(
        'sh', '-c', 'grep SigIgn /proc/self/status')
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << 12)            # SIGPIPE (13) not ignored


def test_execute_timeout_is_recognised_like_processutils():
    with pytest.raises(Exception) as err:
        processes.execute('sleep', '5', timeout=0.2)
    assert processes.is_timeout_expired(err.value)


def test_execute_hands_other_arguments_to_cinder(monkeypatch):
    calls = []
    monkeypatch.setattr(processes.utils, 'execute',
                        lambda *cmd, **kw: calls.append((cmd, kw)) or ('', ''))
    processes.execute('dd', 'if=a', run_as_root=True, attempts=3)
    assert calls == [(('dd', 'if=a'), {'run_as_root': True, 'attempts': 3})]


def test_the_driver_defaults_to_this_executor():
    from cinder.volume import configuration

    from fuse_cinder import driver
    conf = configuration.Configuration(None)
    drv = driver.FuseISCSIDriver(configuration=conf)
    assert drv._execute is processes.execute
    assert drv.mount._execute is processes.execute
