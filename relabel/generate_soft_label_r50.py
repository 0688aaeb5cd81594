"""PRISM's relabel preset for a ResNet-50 student on ImageNet-1k: teachers resnet50,
mobilenet_v2, alexnet, shufflenet_v2_x0_5 (--candidate-number N keeps the first N)
with torchvision's IMAGENET1K_V1 weights (what PRISM's pretrained=True loads), run in float32;
ensemble rule primary-weighted; and PRISM's relabel command as defaults: -b 50 -j 8 --epochs 300
--fkd-seed 42 --input-size 224 --min-scale-crops 0.25 --max-scale-crops 1 --use-fp16
--candidate-number 4 --mode fkd_save --mix-type cutmix (relabel_r50.sh upstream).
Everything else is the generic relabel/generate_soft_label.py (see its --help).

    python relabel/generate_soft_label_r50.py --data DISTILLED --fkd-path STORE --candidate-number 4
"""

from softlabel.commands.relabel import cli

if __name__ == "__main__":
    cli("r50")
