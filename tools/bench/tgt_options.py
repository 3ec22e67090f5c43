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
"""The driver's tgt options that the benchmark sets: named here only.

The data path section sets the write cache and the backing store flags
of each LUN, and one LUN with tgtd's own login keys. Every name of those
options is in this module, so that renaming one is a change in one place.
"""

from fuse_cinder import options

# Cinder's own options (cinder/volume/driver.py), which the driver uses.
WRITE_CACHE = 'iscsi_write_cache'
BSOFLAGS = 'iscsi_target_flags'
# The two as the data path section's text names them.
SETTING_OPTIONS = '``%s`` x ``%s``' % (WRITE_CACHE, BSOFLAGS)

# (write cache, bsoflags) as the driver sets them when not configured.
DEFAULT_SETTING = (True, options.DEFAULT_BSOFLAGS)


# tgtd's own login keys, as driver options (tgt's iscsi/param.c).
TGTD_SESSION_DEFAULTS = dict(fuse_tgt_max_recv_data_segment_length=8192,
                             fuse_tgt_max_burst_length=262144,
                             fuse_tgt_first_burst_length=65536,
                             fuse_tgt_immediate_data=True,
                             fuse_tgt_initial_r2t=True)

# (write cache, bsoflags): every combination the driver's options allow.
TGT_SETTINGS = [(wc, flags) for wc in (True, False)
                for flags in options.BSOFLAGS_CHOICES]


def setting_opts(write_cache, flags):
    """The driver options of one (write cache, bsoflags) setting."""
    return {WRITE_CACHE: 'on' if write_cache else 'off', BSOFLAGS: flags}


def setting_label(write_cache, flags):
    return 'write-cache %s, bsoflags %s' % (
        'on' if write_cache else 'off', '"%s"' % flags)
