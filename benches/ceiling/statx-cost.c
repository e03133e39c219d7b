/* statx-cost: what one freshness check by path costs here, from / and from
 * the root's own descriptor, over the benchmark's tiles in a scattered
 * order (as random requests touch them; a tight loop over one file would
 * show only the cached best case).
 *
 *   gcc -O2 statx-cost.c -o statx-cost
 *   statx-cost target/bench-data/v1/tiles target/bench-data/v1/urls.txt
 *
 * Both loops format the absolute path, so the difference is the walk.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <string.h>
#include <stdlib.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){ // argv[1]=root, argv[2]=urls
  char *urls[30000]; int n=0; char line[512]; FILE*f=fopen(argv[2],"r");
  while(n<30000&&fgets(line,sizeof line,f)){line[strcspn(line,"\n")]=0; urls[n++]=strdup(line+7);} // strip /tiles/
  int dir=open(argv[1],O_PATH|O_DIRECTORY); struct statx sx; char abs[1024]; int N=2000000;
  for(int r=0;r<3;r++){
  double t=now(); for(int i=0;i<N;i++){snprintf(abs,sizeof abs,"%s/%s",argv[1],urls[((unsigned)i*7919u)%n]); statx(AT_FDCWD,abs,0,STATX_BASIC_STATS,&sx);} printf("absolute %.0f ns\n",(now()-t)/N*1e9);
  t=now(); for(int i=0;i<N;i++){snprintf(abs,sizeof abs,"%s/%s",argv[1],urls[((unsigned)i*7919u)%n]); statx(dir,urls[((unsigned)i*7919u)%n],0,STATX_BASIC_STATS,&sx);} printf("relative %.0f ns\n",(now()-t)/N*1e9);}
}
