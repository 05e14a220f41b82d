// The GPU proof's second opinion on gpu/info's Constant, Shared and L2 Cache: the CUDA runtime's
// cudaDeviceProp, the source 1.0 read them from (nvplugin reads the driver API's attributes in a
// child process). One line per device:
//   <pci bus id> <totalConstMem> <sharedMemPerMultiprocessor> <l2CacheSize>
// Built with `nvcc -cudart static`; runs on the host, not in a container.
#include <cstdio>
#include <cuda_runtime.h>

int main() {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        std::printf("CUDA error: %s (cudaGetDeviceCount)\n", cudaGetErrorString(err));
        return 1;
    }
    for (int d = 0; d < count; ++d) {
        cudaDeviceProp prop;
        char bus[32];
        err = cudaGetDeviceProperties(&prop, d);
        if (err == cudaSuccess) err = cudaDeviceGetPCIBusId(bus, sizeof bus, d);
        if (err != cudaSuccess) {
            std::printf("CUDA error: %s (device %d)\n", cudaGetErrorString(err), d);
            return 1;
        }
        std::printf("%s %zu %zu %d\n", bus, prop.totalConstMem, prop.sharedMemPerMultiprocessor,
                    prop.l2CacheSize);
    }
    return 0;
}
