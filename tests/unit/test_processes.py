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
