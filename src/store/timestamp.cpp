#include <fmt/compile.h>
#include <fmt/format.h>

#include "store/conversation_store.h"

namespace staple::store {

// Every turn formats two of these on the writer thread. Calendar arithmetic (no gmtime_r and its
// process-wide time zone lock) and a format string compiled at build time.
std::string FormatTimestamp(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto micros = time_point_cast<microseconds>(t);
  const auto day = floor<days>(micros);
  const year_month_day date{day};
  const hh_mm_ss time{micros - day};
  return fmt::format(FMT_COMPILE("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}"),
                     static_cast<int>(date.year()), static_cast<unsigned>(date.month()),
                     static_cast<unsigned>(date.day()), time.hours().count(),
                     time.minutes().count(), time.seconds().count(), time.subseconds().count());
}

}  // namespace staple::store
