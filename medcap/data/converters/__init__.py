"""Format converters: public datasets and other tools' formats -> medcap's ShareGPT records.

Every dataset converter takes its source, its own choices (splits, language, kind, columns) and one
:class:`ConvertOptions` (image root, caption instructions, empty-answer policy). The record rules
are :mod:`medcap.data.schema`'s; files are written with :mod:`medcap.utils.atomic`.
"""

from medcap.data.converters.common import (
    check_sharegpt_record,
    ConvertOptions,
    DatasetFormatError,
    make_record,
    read_records,
    schema_problems,
)
from medcap.data.converters.instructions import CAPTION_INSTRUCTIONS, caption_instructions
from medcap.data.converters.llava import from_llava, to_llava
from medcap.data.converters.plm import from_plm, to_plm
from medcap.data.converters.pmcoa import convert_pmcoa
from medcap.data.converters.rocov2 import convert_rocov2
from medcap.data.converters.slake import convert_slake
from medcap.data.converters.table import convert_csv, convert_hf, convert_rows, TableColumns
from medcap.data.converters.vqarad import convert_vqarad


def read_sharegpt(path: str, *, image_dir=None, split=None) -> list:
    """Reads a ShareGPT JSON (or jsonl) file, checking every record against the schema.

    Args:
        path (str): the file.
        image_dir (Optional[str]): image root written as ``meta`` to records without one.
        split (Optional[str]): split label for records without one.

    Returns:
        list: the records.
    """
    records = []
    for index, record in enumerate(read_records(path)):
        check_sharegpt_record(record, path, index)
        if image_dir is not None and record.get("image") is not None:
            record.setdefault("meta", f"dir={image_dir}")
        if split is not None:
            record.setdefault("split", split)
        records.append(record)
    return records


__all__ = [
    "CAPTION_INSTRUCTIONS",
    "caption_instructions",
    "check_sharegpt_record",
    "convert_csv",
    "convert_hf",
    "convert_pmcoa",
    "convert_rocov2",
    "convert_rows",
    "convert_slake",
    "convert_vqarad",
    "ConvertOptions",
    "DatasetFormatError",
    "from_llava",
    "from_plm",
    "make_record",
    "read_records",
    "read_sharegpt",
    "schema_problems",
    "TableColumns",
    "to_llava",
    "to_plm",
]
