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
"""How the benchmark writes its figures, and its log lines."""

import math
import statistics
import time

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def ms(seconds):
    return '%.1f ms' % (seconds * 1000)


def secs(seconds):
    return '%.2f s' % seconds if seconds < 10 else '%.1f s' % seconds


def duration(seconds):
    return ms(seconds) if seconds < 1 else secs(seconds)


def ratio(value):
    if value is None or math.isinf(value) or math.isnan(value):
        return 'n/a'
    return '%.2fx' % value if value < 10 else '%.1fx' % value


def size(nbytes):
    if nbytes >= GiB:
        return '%.2f GiB' % (nbytes / GiB)
    return '%.1f MiB' % (nbytes / MiB)


def div(a, b):
    return a / b if b else float('inf')


def median(values):
    return statistics.median(values)


def spread(values):
    """min-max of repeated samples, to show how noisy a median is."""
    return '%s-%s' % (ms(min(values)), ms(max(values)))


def shown(argvs, base):
    """Command lines as reST literals, scratch paths written FILE."""
    lines = []
    for argv in argvs:
        words = []
        for word in argv:
            key, sep, value = word.partition('=')
            if word.startswith(base):
                word = 'FILE'
            elif sep and value.startswith(base):
                word = key + '=FILE'
            words.append(word)
        lines.append('``%s``' % ' '.join(words))
    return ', '.join(lines)


def log(text):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), text), flush=True)
