#!/usr/bin/env bash
# The GPU checks (bench/gpu_checks.sh) on a GPU machine that cannot download: everything they need
# is bundled here first, then carried there, where llama-cpp-python is built with that machine's
# own CUDA toolkit, or was built here beforehand by bench/cuda_wheel.sh.
#
#     bench/gpu_offline.sh bundle DIR               # here: PyPI and ../shared/data reachable
#     bench/gpu_offline.sh run DIR [ROWS]           # there: nvcc, CMake, ninja, Python
#
# DIR gets (43 MB): wheels of what the GPU machine lacks (WHEELS, default the packages an image
# with PyTorch and scikit-learn lacks), llama-cpp-python's source at the version installed here,
# Llama-3's tokenizer (llama.cpp's vocabulary file, given the chat template it lacks) and banking77
# from the suite. `run` installs and builds under $WORK (default /tmp/duckllm-gpu) and leaves the
# Python it runs on untouched. A CUDA build put in DIR before the bundle (`bench/cuda_wheel.sh DIR`,
# 15 to 25 minutes on 2 cores; 55 MB in all) takes the source's place and `run` builds nothing, which
# saves a lent GPU's minutes; CUDA_LIBS then names the CUDA 13 libraries' folder if nvcc's ../lib64
# is not it. CUDA_ARCH picks the GPU architecture (default: the one present; 90-real for an H100 or
# H200); LLAMA_CMAKE_ARGS replaces the CUDA build's flags (say, -DGGML_CUDA=off with SHAPE=tiny to
# try the steps on a CPU).
set -eu
[[ $# -ge 2 && ($1 == bundle || $1 == run) ]] || { echo "usage: $0 bundle DIR | run DIR [ROWS]" >&2; exit 2; }
verb=$1; dir=$(mkdir -p "$2" && realpath "$2")
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
[[ $python != */* ]] || python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")   # the build runs elsewhere
say() { echo; echo "== $* ($(date +%T))"; }
version_of() { $python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

bundle() {
    local version tmp
    version=$(version_of llama_cpp_python)
    tmp=$(mktemp -d)
    say "wheels for Python ${TARGET_PYTHON:-3.12}"
    $python -m pip download -q --no-deps --only-binary=:all: --python-version "${TARGET_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir/wheels" \
        $(for p in ${WHEELS:-duckdb sqlglot gguf}; do echo "$p==$(version_of "$p")"; done)
    say "llama-cpp-python $version, source"
    $python -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$version"
    tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp"
    local src=llama_cpp_python-$version
    local vendored=$tmp/$src/vendor/llama.cpp
    say "Llama-3's tokenizer"
    $python "$repo/bench/random_gguf.py" --chat-template llama-3 --tokenizer-only "$dir/llama3-tokenizer.gguf" \
        --donor "$vendored/models/ggml-vocab-llama-bpe.gguf"
    # 77 MB as published, 10 without its git history, tokenizer files, docs and benchmark logs,
    # which the build does not read: a device's carried tree may hold 64 MB. None with a CUDA build.
    rm -rf "$tmp/$src/.git" "$vendored"/models/*.gguf "$vendored/docs" "$vendored/benches"
    [ -f "$dir/llama_cpp_cuda.tar.xz" ] || tar cJf "$dir/$src.tar.xz" -C "$tmp" "$src"
    say "banking77"
    local suite=${SUITE:-$repo/../shared/data}
    mkdir -p "$dir/suite"
    cp -r "$suite/banking77" "$dir/suite/" && chmod -R u+w "$dir/suite"
    $python -c "import json, sys; m = json.load(open(sys.argv[1])); json.dump({'banking77': m['banking77']}, \
        open(sys.argv[2], 'w'), indent=1)" "$suite/datasets.json" "$dir/suite/datasets.json"
    rm -rf "$tmp"
    du -sh "$dir"
}

run() {
    local work=${WORK:-/tmp/duckllm-gpu} rows=${1:-2000}
    mkdir -p "$work"
    say "install the wheels"
    $python -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$work/site" "$dir"/wheels/*.whl
    if [ -f "$dir/llama_cpp_cuda.tar.xz" ]; then     # built beforehand by bench/cuda_wheel.sh DIR
        say "llama-cpp-python, prebuilt"
        mkdir -p "$work/llama" && tar xJf "$dir/llama_cpp_cuda.tar.xz" -C "$work/llama"
        local toolkit; toolkit=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")/..
        export LD_LIBRARY_PATH=${CUDA_LIBS:-$toolkit/lib64}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    else
        say "build llama-cpp-python"
        tar xJf "$dir"/llama_cpp_python-*.tar.xz -C "$work"
        # No llava/mtmd: duckllm does not use it. Native CPU code: it is built where it runs.
        (cd "$work"/llama_cpp_python-*/ && CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native}} \
                -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" \
            $python -m pip install -q --no-build-isolation --no-deps --no-compile --upgrade --target "$work/llama" . \
            > "$work/build.log" 2>&1) || { tail -40 "$work/build.log"; echo "build failed: $work/build.log"; exit 1; }
    fi
    export PYTHONPATH=$work/llama:$work/site:$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    $python -c "import llama_cpp; print('llama.cpp GPU offload:', llama_cpp.llama_supports_gpu_offload())"
    cd "$repo"
    SUITE=$dir/suite PYTHON=$python MODEL=${MODEL:-$work/${SHAPE:-llama-3-8b}-random.gguf} \
        bash bench/gpu_checks.sh "$dir/llama3-tokenizer.gguf" "$rows"
}

if [ "$verb" = bundle ]; then bundle; else run "${3:-}"; fi
