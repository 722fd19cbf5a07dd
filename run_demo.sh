#!/usr/bin/env bash
# The main job: the three stages on the embedded synthetic LLP default, with the seed's commands.
#   bash run_demo.sh            default synthetic set in data/ and feats/ (made first when data/ has none)
#   bash run_demo.sh --quick    tiny set under runs/quick/, 1 epoch per stage (smoke run, ~1 min)
set -euo pipefail
cd "$(dirname "$0")"
python -c "import avvp, torch, pandas, tqdm, sklearn" 2>/dev/null || python -m pip install -q -r requirements.txt

if [ "${1:-}" = "--quick" ]; then
  root=$(pwd)/runs/quick; data=$root/data; feats=$root/feats
  [ -f "$data/AVVP_train.csv" ] || python -m avvp.synth --data_dir "$data" --feats_dir "$feats" \
      --num_train 96 --num_val 24 --num_test 24 --seed 1
  paths="--label_train $data/AVVP_train.csv --label_val $data/AVVP_val_pd.csv --label_test $data/AVVP_test_pd.csv
         --eval_audio $data/AVVP_eval_audio.csv --eval_visual $data/AVVP_eval_visual.csv"
  s2="--model_save_dir $root/models/stage1 --output_dir $root/stage2
      --train_truth_audio $data/synthetic_train_eval_audio.csv --train_truth_visual $data/synthetic_train_eval_visual.csv"
  cd step1_train_base_model && python main_avvp.py --mode train --audio_dir $feats/vggish/ --video_dir $feats/res152/ --st_dir $feats/r2plus1d_18 $paths --epochs 1 --model_save_dir $root/models/stage1
  cd ../step2_find_exchange && python main_avvp.py --mode estimate_labels --audio_dir $feats/vggish/ --video_dir $feats/res152/ --st_dir $feats/r2plus1d_18 $paths $s2
  cd ../step3_retrain && python main_avvp.py --mode retrain --audio_dir $feats/vggish/ --video_dir $feats/res152/ --st_dir $feats/r2plus1d_18 $paths --epochs 1 --model_save_dir $root/models/stage3 --label_ma $root/stage2/modality_aware_labels.csv
  python main_avvp.py --mode parse --audio_dir $feats/vggish/ --video_dir $feats/res152/ --st_dir $feats/r2plus1d_18 $paths --model_save_dir $root/models/stage3 --parse_out $root/parse
  cd .. && python -m avvp.report --stage1 $root/models/stage1 --stage2 $root/stage2 --stage3 $root/models/stage3
  echo "stage 3 on the test split, to look at: $root/parse/index.html"
  exit 0
fi

# the default synthetic set, made when data/ has none (or an older one); real LLP files are kept
if python -c "import sys; from avvp import synth; sys.exit(0 if synth.needs_default('data') else 1)"; then
  python -m avvp.synth --data_dir data --feats_dir feats
fi
(cd step1_train_base_model && python main_avvp.py --mode train --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18)
(cd step2_find_exchange && python main_avvp.py --mode estimate_labels --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18)
(cd step3_retrain && python main_avvp.py --mode retrain --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18)
(cd step3_retrain && python main_avvp.py --mode parse --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18)
python -m avvp.report
echo "stage 3 on the test split, to look at: $(pwd)/step3_retrain/outputs/parse/index.html"
