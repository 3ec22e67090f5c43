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
"""Configuration options of the FUSE iSCSI driver.

They are registered once, in Cinder's shared ``backend_defaults`` group, so
that every backend section may override them, as Cinder's own drivers do.
"""

from typing import Any

from oslo_config import cfg

from cinder.volume import configuration

fuse_opts = [
    cfg.StrOpt('volumes_home',
               default='/mnt/fuse/volumes',
               help='Directory on the FUSE mount that holds one sparse '
                    'file per volume and per snapshot. It must already '
                    'exist; the driver never mounts anything itself.'),
    cfg.BoolOpt('fuse_check_mount',
                default=True,
                help='Refuse to start unless volumes_home lies on a live '
                     'FUSE filesystem mounted with allow_other or '
                     'allow_root, so that root and tgtd can reach the '
                     'files. The root helper (fuse-cinder-files) refuses '
                     'a directory that is not on FUSE whatever this says.'),
    cfg.BoolOpt('fuse_sparse_volumes',
                default=True,
                help='Create volumes as sparse files (thin provisioning). '
                     'When False every byte is allocated at creation time '
                     '(thick provisioning), which is slow on FUSE.'),
    cfg.IntOpt('fuse_fs_call_timeout',
               default=30,
               min=1,
               help='Seconds any metadata call on the mount (stat, '
                    'statvfs, truncate, rename, unlink) may take before '
                    'the driver gives up. A hung FUSE daemon otherwise '
                    'blocks cinder-volume forever.'),
    cfg.FloatOpt('fuse_watch_interval',
                 default=1.0,
                 min=0,
                 help='Seconds between two looks at the kernel\'s mount '
                      'table for a FUSE mount that was replaced under '
                      'volumes_home: the LUNs on it are re-opened in tgtd '
                      'at once instead of at the next statistics update. '
                      'Reading /proc/self/mountinfo never blocks. 0 turns '
                      'the watch off (and the reconciliation below).'),
    cfg.IntOpt('fuse_copy_timeout',
               default=6 * 3600,
               min=1,
               help='Seconds a data copy on the mount (snapshot, clone, '
                    'revert) may take before the driver gives up.'),
]


#: What iscsi_target_flags may say for this driver's LUNs (tgtd's bsoflags
#: for a file backing store), and what it means when the operator leaves it
#: unset. "direct" bypasses the page cache of the cinder-volume host, so
#: FUSE gets large requests and the host holds no second copy of the data;
#: empty keeps buffered I/O. With iscsi_write_cache off tgtd issues an
#: fdatasync after every write, a FUSE round trip each; with it on the
#: initiator's SYNCHRONIZE CACHE makes writes durable (all file systems
#: and hypervisors issue it). See BENCHMARKS.rst.
BSOFLAGS_CHOICES = ('', 'direct', 'sync', 'direct,sync')
DEFAULT_BSOFLAGS = 'direct'


def _iscsi_length(name: str, text: str) -> cfg.IntOpt:
    """An iSCSI length key: RFC 7143's range, 256 KiB by default."""
    return cfg.IntOpt(name, default=262144, min=512, max=16777215,
                      help=text)


tgt_opts = [
    cfg.IntOpt('fuse_tgt_control_port',
               default=0,
               min=0,
               max=65535,
               help='tgtd management control port (tgtd -C) to drive. 0 '
                    'means the default tgtd instance.'),
    cfg.IntOpt('fuse_tgt_reconcile_interval',
               default=10,
               min=0,
               help='Seconds between two comparisons of tgtd\'s targets '
                    'with the exports cinder-volume made (its records in '
                    'volumes_dir): a tgtd that restarted empty gets every '
                    'export of this backend back within this time, '
                    'without a cinder-volume restart. One tgtd listing '
                    'each time. 0 turns it off.'),
    # Cinder's iscsi_write_cache and iscsi_target_flags (cinder/volume/
    # driver.py) say the same; these two stay for configurations written
    # for earlier releases of this driver, and win when set.
    cfg.BoolOpt('fuse_tgt_write_cache',
                deprecated_for_removal=True,
                deprecated_reason='Use iscsi_write_cache (on/off).',
                help='Enable the write cache of exported LUNs; unset '
                     'follows iscsi_write_cache.'),
    cfg.StrOpt('fuse_tgt_bsoflags',
               choices=BSOFLAGS_CHOICES,
               deprecated_for_removal=True,
               deprecated_reason='Use iscsi_target_flags.',
               help='Open flags for the LUN backing file in tgtd; unset '
                    'follows iscsi_target_flags.'),
    # iSCSI login keys each target offers (RFC 7143). Cinder has no
    # options for these; tgtd's defaults (8 KiB data PDUs, every write
    # burst solicited by an R2T) cost a round trip per 8 KiB written.
    _iscsi_length('fuse_tgt_max_recv_data_segment_length',
                  'MaxRecvDataSegmentLength of each target: the largest '
                  'data PDU tgtd accepts from an initiator, so the size in '
                  'which writes travel (tgtd\'s default is 8192). Applies '
                  'to sessions that log in after the export. See '
                  'BENCHMARKS.rst.'),
    _iscsi_length('fuse_tgt_max_burst_length',
                  'MaxBurstLength of each target: the most data of one '
                  'sequence (read data, or write data per R2T). libiscsi '
                  'takes at most 262144.'),
    _iscsi_length('fuse_tgt_first_burst_length',
                  'FirstBurstLength of each target: the unsolicited data '
                  'an initiator may send with a write (immediate data '
                  'and/or data-out before the first R2T). At most '
                  'fuse_tgt_max_burst_length.'),
    cfg.BoolOpt('fuse_tgt_immediate_data',
                default=True,
                help='ImmediateData of each target: whether an initiator '
                     'may send write data inside the command PDU.'),
    cfg.BoolOpt('fuse_tgt_initial_r2t',
                default=False,
                help='InitialR2T of each target: when on, every write '
                     'waits for tgtd\'s R2T before sending any data '
                     'beyond the immediate data (tgtd\'s default is on).'),
]

CONF = cfg.CONF
CONF.register_opts(fuse_opts, group=configuration.SHARED_CONF_GROUP)
CONF.register_opts(tgt_opts, group=configuration.SHARED_CONF_GROUP)


def is_set(conf: Any, name: str) -> bool:
    """Did the operator give ``name`` a value for this backend?

    Cinder's default of iscsi_target_flags ('', buffered I/O) is not this
    driver's, so its default only applies to a value somebody chose:
    in the backend section, in [backend_defaults] or by set_default.
    """
    group = conf.config_group
    if group and getattr(CONF[group], name) is not None:
        return True
    shared = configuration.SHARED_CONF_GROUP if group else None
    where = CONF.get_location(name, shared)
    return where is not None and where.location != cfg.Locations.opt_default


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator."""
    return [(configuration.SHARED_CONF_GROUP, fuse_opts + tgt_opts)]
