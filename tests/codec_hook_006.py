# The django-memdb 0.0.6 README example hook, verbatim apart from the import path of
# ``signals`` and the two connect() lines (as issue 3 shows them). Kept exactly as
# written, so neither linted nor formatted.
# ruff: noqa
# fmt: off
from django.conf import settings
import json, zlib
from memdb import signals

def compress(arguments):
    "Compress data."
    # pylint: disable=redefined-variable-type
    if arguments['process'] == settings.MEMDB_PROCESS_ENCODE:
        data = arguments['data']
        data = json.dumps(data)
        data = data.encode('utf-8')
        data = zlib.compress(data)
        arguments['data'] = data
    elif arguments['process'] == settings.MEMDB_PROCESS_DECODE:
        data = arguments['data']
        data = zlib.decompress(data)
        data = data.decode('utf-8')
        data = json.loads(data)
        arguments['data'] = data

def hook(sender, **kwargs):
    kwargs["kwargs"]["processors"].append(compress)

signals.store_save.connect(hook)
signals.store_load.connect(hook)
