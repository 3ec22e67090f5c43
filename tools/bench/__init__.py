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
"""The parts of tools/benchmark.py, which runs them and writes the report.

units         how figures are written (ms, ratios, sizes, medians)
tgt_options   the driver's tgt options the benchmark sets, named once
environment   scratch mounts, tgtd instances, drivers, the timed executor
create        section 1, create_volume: 1 GiB vs 1 TiB
stats         section 2, get_volume_stats: 1 vs N volumes
export        section 3, export latency and start-up re-export
export_report its table, goals and finding
copy          section 4, snapshot and clone vs Cinder's dd
copy_report   its table, goals, notes and finding
empty_copy    copies of an empty volume (part of section 4)
io_targets    the LUNs and files of section 5, and qemu-img bench
io            section 5, the data path
io_report     its recommendation, notes, finding and ceiling table
report        the sections collected, and BENCHMARKS.rst around them
"""

# First of all: Cinder's unit-test package patches this process with
# eventlet when imported, as cinder-volume is patched. oslo.privsep picks
# green or plain pipes when it is first imported (through os-brick by
# cinder.volume.volume_utils, or fuse_cinder.privileged), and with a plain
# pipe the whole process blocks while the privsep daemon starts. Every
# module of this package is imported after this line.
from cinder.tests.unit import fake_volume  # noqa: F401
