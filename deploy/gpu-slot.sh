#!/bin/sh
# gpu-slot CMD [ARG...]: run CMD on one GPU that no other worker on this host holds.
#
# Compose gives every replica of a service the same device request, so `count: 1` would put all of
# `docker compose up --scale worker=N` on GPU 0. The worker service therefore reserves all GPUs and
# each replica claims one here: it takes an exclusive flock on $GPU_SLOT_LOCKS/gpu-<i> (a volume the
# replicas share) for the first free i, keeps it for its lifetime (the lock dies with the process, so
# a stopped or crashed worker frees its GPU at once) and runs CMD with CUDA_VISIBLE_DEVICES=<i>.
#
#   WORKER_GPUS       GPU indexes to use, as nvidia-smi numbers them, e.g. "0,2" (default: all)
#   GPU_SLOT_LOCKS    lock directory (default /gpu-locks)
#   GPU_SLOT_DEVICES  where the nvidia<i> device nodes are counted (default /dev)
# With no GPU visible and WORKER_GPUS unset, CMD runs unchanged (CPU image, CPU host).
set -eu

[ "$#" -gt 0 ] || { echo "usage: gpu-slot CMD [ARG...]" >&2; exit 64; }

gpus="${WORKER_GPUS:-}"
if [ -z "$gpus" ]; then
    count=$(find "${GPU_SLOT_DEVICES:-/dev}" -maxdepth 1 -name 'nvidia[0-9]*' 2>/dev/null | wc -l)
    [ "$count" -gt 0 ] || exec "$@"
    gpus=$(seq -s, 0 $((count - 1)))
fi

locks="${GPU_SLOT_LOCKS:-/gpu-locks}"
mkdir -p "$locks"
for gpu in $(echo "$gpus" | tr ',' ' '); do
    exec 9>"$locks/gpu-$gpu"
    if flock --nonblock 9; then
        echo "gpu-slot: $(uname -n) runs on GPU $gpu" >&2
        export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$gpu"
        exec "$@"
    fi
done
echo "gpu-slot: every GPU ($gpus) already has a worker; run at most one worker per GPU" >&2
exit 75
