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
"""What the executor's failures mean, wherever it runs."""


def is_timeout_expired(exc):
    """Whether exc is subprocess's TimeoutExpired, from any copy of it.

    processutils raises it when a command outlives its ``timeout``. Under
    eventlet (cinder-volume), the green subprocess raises it from
    eventlet's private copy of the subprocess module, a class unrelated
    to ``subprocess.TimeoutExpired``, so ``except`` on that misses it.
    """
    return any(cls.__name__ == 'TimeoutExpired'
               for cls in type(exc).__mro__)
