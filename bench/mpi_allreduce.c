/* bench/mpi_allreduce.c -- the MPI library's own allreduce, the reference for
 * bench/bench_dist.lua: MPI_Allreduce (sum, in place) of one f32 buffer of BYTES, median of
 * REPS after 2 warm-ups, each timed between barriers. Checks the sum once.
 *
 *   mpirun -np 2 build/bench/mpi_allreduce [BYTES = 104857600] [REPS = 9]
 *   -> "mpi_allreduce bytes B ranks N seconds S algbw_GBps G"   (rank 0)
 * Algorithm bandwidth = BYTES / seconds, the figure nccl-tests and the MPI benchmarks
 * report as algbw. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long long bytes = argc > 1 ? atoll(argv[1]) : 104857600LL;
  int reps = argc > 2 ? atoi(argv[2]) : 9;
  if (bytes < 4 || reps < 1 || bytes / 4 > 0x7fffffffLL) {
    if (rank == 0) fprintf(stderr, "mpi_allreduce: BYTES must be in 4..8 GiB and REPS >= 1\n");
    MPI_Finalize();
    return 2;
  }
  int n = (int)(bytes / 4);
  float *buf = malloc((size_t)n * sizeof(float));
  double *t = malloc((size_t)reps * sizeof(double));
  if (!buf || !t) {
    fprintf(stderr, "mpi_allreduce: out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int i = 0; i < n; i++) buf[i] = (float)(rank + 1);
  MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  float want = (float)size * (float)(size + 1) / 2.0f;
  int bad = buf[0] != want || buf[n / 2] != want || buf[n - 1] != want;
  if (bad) fprintf(stderr, "mpi_allreduce: rank %d got %g, expected %g\n", rank, buf[0], want);
  MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  for (int r = 0; r < reps; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    t[r] = MPI_Wtime() - t0;
  }
  /* The slowest rank's time is the collective's. */
  MPI_Allreduce(MPI_IN_PLACE, t, reps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  qsort(t, (size_t)reps, sizeof(double), cmp);
  double med = t[reps / 2];
  if (rank == 0)
    printf("mpi_allreduce bytes %lld ranks %d seconds %.6f algbw_GBps %.3f%s\n", bytes, size, med, (double)bytes / med / 1e9,
           bad ? " MISMATCH" : "");
  free(buf);
  free(t);
  MPI_Finalize();
  return bad;
}
