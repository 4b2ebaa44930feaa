"""Build Chain-of-Region TFDS records (ArrayRecord) from a local photo collection, or the demo world.

    # MP16-Pro: MP16_Pro_places365.csv + mp-16-images/ in /data/mp16
    python tools/build_dataset.py --layout=mp16_pro --manual_dir=/data/mp16 \
        --data_dir=/data/records --max_long_side=512
    # IM2GPS3K: im2gps3k_places365.csv + im2gps3k_rgb_images/ in /data/im2gps3k
    python tools/build_dataset.py --layout=im2gps3k --manual_dir=/data/im2gps3k --data_dir=/data/records
    # The offline demo world (300 procedural images, seconds)
    python tools/build_dataset.py --demo --data_dir=/tmp/georjax_demo

Prints a tqdm progress bar while examples are generated, then the build
report (rows written, rows skipped per reason with examples), saved as
build_report.json next to the records. A CSV whose header lacks the layout's
columns, no row written, or more than --max_bad_fraction of the rows bad:
one "build failed: ..." line on stderr and exit code 2.
"""

import os
import sys
import time

from absl import app, flags

from geor_jax.data import builder, demo_world, layouts, tokenizer
from geor_jax.run import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("layout", "generic", sorted(layouts.LAYOUTS), "On-disk layout of the collection.")
flags.DEFINE_string("manual_dir", None, "Folder holding the metadata CSV and the images.")
flags.DEFINE_string("data_dir", None, "Where the records go (<data_dir>/geo_cor_records/<config>/1.1.0).")
flags.DEFINE_string("config_name", None, "Config (folder) name; default: layout plus non-default options.")
flags.DEFINE_string("csv_path", None, "Metadata CSV (default: the layout's usual file names).")
flags.DEFINE_string("image_dir", None, "Image folder (default: the layout's usual folders).")
flags.DEFINE_string("split", None, "Split name (default: train; test for im2gps3k/yfcc4k).")
flags.DEFINE_integer("max_long_side", None, "Shrink images whose long side is larger (keeps records small).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of re-encoded images.")
flags.DEFINE_float("max_bad_fraction", 0.01, "Fail if more than this fraction of rows is bad.")
flags.DEFINE_integer("num_workers", 4, "Threads decoding and encoding images.")
flags.DEFINE_integer("chunk_size", 2048, "Rows reverse-geocoded per batch.")
flags.DEFINE_bool("demo", False, "Generate and build the offline demo world instead.")
flags.DEFINE_integer("demo_images", 300, "Demo world size.")
flags.DEFINE_integer("demo_seed", 0, "Demo world seed.")
flags.DEFINE_integer("demo_vocab_size", 8192, "With --demo: vocab of the demo BPE tokenizer written to "
                     "<data_dir>/demo_tokenizer (0 skips it).")
flags.mark_flag_as_required("data_dir")


def main(argv):
    """Build the records (or the demo world) and report."""
    del argv
    start = time.perf_counter()
    try:
        if FLAGS.demo:
            records_dir, report = demo_world.build_demo_records(FLAGS.data_dir, num_images=FLAGS.demo_images,
                                                                seed=FLAGS.demo_seed)
            print(f"demo world records: {time.perf_counter() - start:.1f} s")
            tokenizer_dir = os.path.join(FLAGS.data_dir, "demo_tokenizer")
            if FLAGS.demo_vocab_size and not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
                tok = tokenizer.build_demo_tokenizer(tokenizer_dir, vocab_size=FLAGS.demo_vocab_size)
                print(f"demo tokenizer: {tokenizer_dir} (vocab {tok.vocab_size}, "
                      f"{tok.special_ids.model_config_overrides()})")
        else:
            if not FLAGS.manual_dir:
                raise app.UsageError("--manual_dir is required (or --demo)")
            records_dir, report = builder.build_records(
                FLAGS.layout, FLAGS.manual_dir, FLAGS.data_dir, config_name=FLAGS.config_name, split=FLAGS.split,
                max_long_side=FLAGS.max_long_side, jpeg_quality=FLAGS.jpeg_quality, csv_path=FLAGS.csv_path,
                image_dir=FLAGS.image_dir, max_bad_fraction=FLAGS.max_bad_fraction,
                num_workers=FLAGS.num_workers, chunk_size=FLAGS.chunk_size)
    except (builder.BadRowsError, layouts.LayoutError) as error:
        print(f"build failed: {error}", file=sys.stderr)
        sys.exit(2)
    if report is None:
        print(f"records already built in {records_dir} (see its {builder.REPORT_NAME})")
    print(f"records: {records_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    cli.main(main)
