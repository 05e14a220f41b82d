/*
 * A fake libcuda.so.1 for tests: the driver API calls nvplugin makes to read the memory sizes
 * 1.0 showed (cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetAttribute, cuDeviceGetPCIBusId,
 * cuGetErrorName), answered from the same JSON file as the fake NVML ($FAKE_NVML_CONFIG), so one
 * config describes one machine and both libraries agree on its GPUs' bus ids.
 *
 * Config (schema beside the fake NVML's, tests/fakenvml/build.py):
 *   top level  "cuda": {"init_error": "CUDA_ERROR_NO_DEVICE" (a name below or a number: cuInit
 *              answers it), "order": [NVML indices in CUDA's enumeration order] (missing: NVML's
 *              order; CUDA's default order, fastest first, often differs from the bus order),
 *              "init_delay_ms": 5000 (cuInit sleeps first: a driver that hangs)}
 *   per GPU    "cuda_attributes": {"total_constant_memory": 65536,
 *              "max_shared_memory_per_multiprocessor": 233472, "l2_cache_size": 62914560, or
 *              any CU_DEVICE_ATTRIBUTE_* number as a string key: value} (a missing attribute
 *              answers CUDA_ERROR_INVALID_VALUE, as libcuda does for one it does not know; a
 *              string value names the error to answer); its "bus_id" is NVML's, printed here as
 *              CUDA prints it (4-digit domain).
 * No config file: cuInit answers CUDA_ERROR_NO_DEVICE, as libcuda does without a GPU.
 *
 * The JSON reader is fakenvml.c's, put in front of this file by tests/fakenvml/cuda.py (one
 * reader for both fakes): this file compiles only through there.
 */

typedef int CUresult;
typedef int CUdevice;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_UNKNOWN 999

static const struct { const char *name; int code; } CU_ERRORS[] = {
    {"CUDA_SUCCESS", 0}, {"CUDA_ERROR_INVALID_VALUE", 1}, {"CUDA_ERROR_OUT_OF_MEMORY", 2},
    {"CUDA_ERROR_NOT_INITIALIZED", 3}, {"CUDA_ERROR_DEINITIALIZED", 4},
    {"CUDA_ERROR_STUB_LIBRARY", 34}, {"CUDA_ERROR_DEVICE_UNAVAILABLE", 46},
    {"CUDA_ERROR_NO_DEVICE", 100}, {"CUDA_ERROR_INVALID_DEVICE", 101},
    {"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", 803}, {"CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", 804},
    {"CUDA_ERROR_OPERATING_SYSTEM", 304}, {"CUDA_ERROR_NOT_SUPPORTED", 801},
    {"CUDA_ERROR_UNKNOWN", 999},
};

static const struct { const char *name; int attribute; } CU_ATTRIBUTES[] = {
    {"total_constant_memory", 9}, {"l2_cache_size", 38},
    {"max_shared_memory_per_multiprocessor", 81},
};

static jv *cu_cfg;
static int cu_initialized;

static int cu_error_code(const jv *v) {
    if (v && v->type == J_NUM) return (int)v->num;
    if (v && v->type == J_STR)
        for (size_t i = 0; i < sizeof CU_ERRORS / sizeof *CU_ERRORS; i++)
            if (!strcmp(CU_ERRORS[i].name, v->str)) return CU_ERRORS[i].code;
    return CUDA_ERROR_UNKNOWN;
}

/* Read the config once, at cuInit, as libcuda reads the machine once. */
static int cu_load(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return CUDA_ERROR_NO_DEVICE;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    size_t got;
    while ((got = fread(text + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) text = realloc(text, cap *= 2);
    }
    fclose(f);
    text[len] = 0;
    const char *p = text;
    jv *parsed = parse_value(&p);
    free(text);
    if (!parsed || parsed->type != J_OBJ) {
        fprintf(stderr, "fakecuda: %s is not a JSON object\n", path);
        jfree(parsed);
        return CUDA_ERROR_UNKNOWN;
    }
    jfree(cu_cfg);
    cu_cfg = parsed;
    return CUDA_SUCCESS;
}

static int cu_count(void) {
    jv *order = jget(jget(cu_cfg, "cuda"), "order");
    if (order && order->type == J_ARR) return order->n;
    jv *gpus = jget(cu_cfg, "gpus");
    return gpus && gpus->type == J_ARR ? gpus->n : 0;
}

/* The GPU entry of CUDA ordinal `dev`, or NULL. */
static jv *cu_gpu(CUdevice dev) {
    if (dev < 0 || dev >= cu_count()) return NULL;
    jv *order = jget(jget(cu_cfg, "cuda"), "order");
    int index = dev;
    if (order && order->type == J_ARR) {
        jv *at = jat(order, dev);
        if (!at || at->type != J_NUM) return NULL;
        index = (int)at->num;
    }
    return jat(jget(cu_cfg, "gpus"), index);
}

CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    int rc = cu_load();
    if (rc != CUDA_SUCCESS) return rc;
    jv *delay = jget(jget(cu_cfg, "cuda"), "init_delay_ms");
    if (delay && delay->type == J_NUM && delay->num > 0) {
        struct timespec ts = {(time_t)(delay->num / 1000), (long)((long long)(delay->num * 1e6) % 1000000000LL)};
        nanosleep(&ts, NULL);
    }
    jv *error = jget(jget(cu_cfg, "cuda"), "init_error");
    if (error && error->type != J_NULL) return cu_error_code(error);
    cu_initialized = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    if (!cu_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = cu_count();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!cu_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_gpu(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice dev) {
    if (!cu_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    jv *gpu = cu_gpu(dev);
    if (!gpu) return CUDA_ERROR_INVALID_DEVICE;
    jv *attributes = jget(gpu, "cuda_attributes");
    char number[16];
    snprintf(number, sizeof number, "%d", attribute);
    jv *v = jget(attributes, number);
    for (size_t i = 0; !v && i < sizeof CU_ATTRIBUTES / sizeof *CU_ATTRIBUTES; i++)
        if (CU_ATTRIBUTES[i].attribute == attribute) v = jget(attributes, CU_ATTRIBUTES[i].name);
    if (!v || v->type == J_NULL) return CUDA_ERROR_INVALID_VALUE;
    if (v->type != J_NUM) return cu_error_code(v);
    *value = (int)v->num;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetPCIBusId(char *out, int len, CUdevice dev) {
    if (!cu_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    jv *gpu = cu_gpu(dev);
    if (!gpu) return CUDA_ERROR_INVALID_DEVICE;
    jv *bus = jget(gpu, "bus_id");
    unsigned domain, b, d, fn;
    if (!bus || bus->type != J_STR || sscanf(bus->str, "%x:%x:%x.%x", &domain, &b, &d, &fn) != 4)
        return CUDA_ERROR_UNKNOWN;
    char text[32];
    int n = snprintf(text, sizeof text, "%04X:%02X:%02X.%X", domain, b, d, fn);
    if (!out || len <= n) return CUDA_ERROR_INVALID_VALUE;
    memcpy(out, text, (size_t)n + 1);
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof CU_ERRORS / sizeof *CU_ERRORS; i++)
        if (CU_ERRORS[i].code == error) { *name = CU_ERRORS[i].name; return CUDA_SUCCESS; }
    *name = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}
