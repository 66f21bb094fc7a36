#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "store/conversation_store.h"

namespace staple::testing {

// A store::History holding `rows`, for tests that write a conversation by hand.
inline store::History SharedRows(std::vector<store::HistoryMessage> rows) {
  store::History history;
  history.reserve(rows.size());
  for (auto& row : rows) {
    history.push_back(std::make_shared<const store::HistoryMessage>(std::move(row)));
  }
  return history;
}

// What RecentMessages gives of the stored row `row`.
inline store::HistoryMessage HistoryOf(const store::StoredMessage& row) {
  return store::HistoryMessage{row.id, row.role, row.content};
}

// Copies of the rows of `history`, for tests that compare them as values.
inline std::vector<store::HistoryMessage> CopiedRows(const store::History& history) {
  std::vector<store::HistoryMessage> rows;
  rows.reserve(history.size());
  for (const auto& row : history) rows.push_back(*row);
  return rows;
}

}  // namespace staple::testing
