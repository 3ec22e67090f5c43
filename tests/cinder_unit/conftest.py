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
"""Never collected here: these are Cinder unit tests of the patched code.

They import Cinder's own test base (testtools, oslotest) and test code
that only a patched Cinder has, so the installed Cinder cannot run them.
tests/functional/test_patches_apply.py copies them into
cinder/tests/unit/volume/ of a patched copy and runs them there.
"""

collect_ignore_glob = ['test_*.py']
