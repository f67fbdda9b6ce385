#!/usr/bin/env bash
# llama-cpp-python built with CUDA on a machine with neither a GPU nor a CUDA toolkit: nvcc, the
# CUDA runtime and cuBLAS come from PyPI's nvidia-* wheels. For a GPU machine that cannot download
# (how issue 3's GPU numbers were taken); 15 to 25 minutes on 2 cores for one GPU architecture.
#
#     bench/cuda_wheel.sh OUT_DIR [ARCH]      # ARCH: 90 (H100, H200; the default), 89, 86, 80 ...
#
# OUT_DIR gets llama_cpp_cuda.tar.xz (21 MB): the llama_cpp package, one copy of each library, to
# unpack onto PYTHONPATH there. There, libcudart.so.13 and libcublas.so.13 must be on
# LD_LIBRARY_PATH (a CUDA 13 toolkit's targets/x86_64-linux/lib; the driver must be 580 or newer).
set -eu
out=$(realpath "$1"); arch=${2:-90}; version=0.3.36
work=$(mktemp -d); cd "$work"
python3 -m venv venv
venv/bin/pip install -q "scikit-build-core[pyproject]>=0.9.2" cmake ninja
venv/bin/pip download -q --no-deps -d wheels "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
venv/bin/pip download -q --no-deps --no-binary :all: -d src "llama-cpp-python==$version"
for w in wheels/*.whl; do unzip -q -o "$w" -d cuda; done
cuda=$work/cuda/nvidia/cu13              # laid out as the toolkit nvcc.profile and CMake expect
mkdir -p "$cuda/targets/x86_64-linux"
ln -sfn ../../include "$cuda/targets/x86_64-linux/include"
ln -sfn ../../lib "$cuda/targets/x86_64-linux/lib"
ln -sfn lib "$cuda/lib64"
for l in cudart cublas cublasLt; do ln -sf "lib$l.so.13" "$cuda/lib/lib$l.so"; done
tar xzf src/llama_cpp_python-$version.tar.gz

# No VMM: it links the driver library, which no wheel carries. AVX2 for the CPU part: the GPU
# machine's processor is not this one, so no -march=native. No llava/mtmd: duckllm does not use it.
PATH=$work/venv/bin:$cuda/bin:$PATH CUDACXX=$cuda/bin/nvcc CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch-real -DGGML_CUDA_NO_VMM=ON -DLLAVA_BUILD=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DCUDAToolkit_ROOT=$cuda" \
    venv/bin/pip wheel -q --no-build-isolation --no-deps -w built "./llama_cpp_python-$version"

# The wheel holds each library four times (symbolic links become copies): keep one, by soname.
unzip -q built/*.whl -d unpacked
mkdir -p slim && cp -r unpacked/llama_cpp slim/ && rm -rf slim/llama_cpp/lib/* slim/llama_cpp/server
for l in llama ggml ggml-base ggml-cpu; do cp "unpacked/llama_cpp/lib/lib$l.so" slim/llama_cpp/lib/; done
for l in ggml ggml-base ggml-cpu ggml-cuda; do cp "unpacked/llama_cpp/lib/lib$l.so" "slim/llama_cpp/lib/lib$l.so.0"; done
strip --strip-unneeded slim/llama_cpp/lib/*
mkdir -p "$out" && tar cJf "$out/llama_cpp_cuda.tar.xz" -C slim llama_cpp
rm -rf "$work"
ls -l "$out/llama_cpp_cuda.tar.xz"
