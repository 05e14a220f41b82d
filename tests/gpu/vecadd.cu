// A CUDA vector add for the GPU proof: prints what the container sees and whether the sum is right.
// Built with `nvcc -cudart static`, so the image needs no CUDA runtime; only the driver's libcuda,
// which the nvidia_driver volume provides.
#include <cstdio>
#include <cstdlib>
#include <time.h>
#include <cuda_runtime.h>

#define CHECK(call)                                                                  \
    do {                                                                             \
        cudaError_t err_ = (call);                                                   \
        if (err_ != cudaSuccess) {                                                   \
            std::printf("CUDA error: %s (%s)\n", cudaGetErrorString(err_), #call);  \
            return 1;                                                                \
        }                                                                            \
    } while (0)

__global__ void add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

int main() {
    int count = 0, driver = 0;
    CHECK(cudaDriverGetVersion(&driver));
    CHECK(cudaGetDeviceCount(&count));
    std::printf("CUDA driver API: %d.%d\n", driver / 1000, (driver % 1000) / 10);
    std::printf("Devices: %d\n", count);
    for (int d = 0; d < count; ++d) {
        cudaDeviceProp prop;
        CHECK(cudaGetDeviceProperties(&prop, d));
        std::printf("Device %d: %s (%02x:%02x.0)\n", d, prop.name, prop.pciBusID, prop.pciDeviceID);
    }
    const int n = 1 << 24;
    float *a, *b, *c;
    CHECK(cudaMalloc(&a, n * sizeof(float)));
    CHECK(cudaMalloc(&b, n * sizeof(float)));
    CHECK(cudaMalloc(&c, n * sizeof(float)));
    float *host = static_cast<float *>(std::malloc(n * sizeof(float)));
    for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i % 1000);
    CHECK(cudaMemcpy(a, host, n * sizeof(float), cudaMemcpyHostToDevice));
    for (int i = 0; i < n; ++i) host[i] = 0.5f * static_cast<float>(i % 777);
    CHECK(cudaMemcpy(b, host, n * sizeof(float), cudaMemcpyHostToDevice));
    add<<<(n + 255) / 256, 256>>>(a, b, c, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(host, c, n * sizeof(float), cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int i = 0; i < n; ++i) {
        float want = static_cast<float>(i % 1000) + 0.5f * static_cast<float>(i % 777);
        if (host[i] != want) ++wrong;
    }
    std::printf("Vector add of %d elements: %s\n", n, wrong ? "FAIL" : "PASS");
    const char *hold = std::getenv("VECADD_HOLD_SECONDS");
    if (hold) {
        // Keep the context (and the driver volume) busy, for the daemon-restart step.
        int seconds = std::atoi(hold);
        for (int s = 0; s < seconds * 10; ++s) {
            add<<<(n + 255) / 256, 256>>>(a, b, c, n);
            CHECK(cudaDeviceSynchronize());
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, nullptr);
        }
        std::printf("Held the GPU for %d s: OK\n", seconds);
    }
    cudaFree(a); cudaFree(b); cudaFree(c); std::free(host);
    return wrong ? 1 : 0;
}
