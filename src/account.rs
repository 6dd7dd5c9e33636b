//! One upstream context per vendor account, chosen once per request and passed down.
//!
//! Each [`Account`] is its own upstream: its own client and JWT minting, its own
//! sliding-window budget (the vendor's 60 calls a minute are per account), its own cache
//! [`Namespace`] (so every key of every tier names whose data it is), its own cursor key and
//! its own readiness. The cache and the tiers know accounts only through the namespace in
//! the key (linkerd2-proxy's stack per target, looked up per request).
//!
//! [`Accounts`] chooses the account of a request: the one it names, else the default (the
//! only one, or the one marked `default`); and says whether a key may read it
//! (`GATEWAY_KEY_ACCOUNTS`; admin keys read every account).

use std::{collections::HashMap, sync::Arc};

use crate::{
    cache::Namespace,
    config::{AccountSettings, Rate},
    error::AppError,
    fetch::{Allowance, Fetcher},
    render::CursorKey,
};

/// One vendor account's upstream context.
#[derive(Debug)]
pub struct Account {
    /// The `account` parameter's value.
    pub name: Arc<str>,
    /// The vendor's account id (path and `accountId` header).
    pub account_id: String,
    /// The base URL, for the status page (never a credential).
    pub base_url: String,
    /// Whose data: in every cache key made for this account.
    pub ns: Namespace,
    /// Its client (JWT minting), budget and retry policy.
    pub fetcher: Arc<Fetcher>,
    /// Signs and checks its cursors (derived from its client secret).
    pub cursor_key: CursorKey,
    /// How the vendor reads `offset` (the drop-in route needs it).
    pub offset_mode: crate::config::OffsetMode,
    /// Its calls per sliding period.
    pub rate: Rate,
    /// Position in [`Accounts`] (requests carry it instead of the account).
    pub index: usize,
}

impl Account {
    /// A fresh call allowance for one request on this account (MAX_CALLS_PER_REQUEST, and
    /// when its budget refills it).
    pub fn allowance(&self, max_calls_per_request: u32) -> Allowance {
        Allowance::new(max_calls_per_request, self.rate)
    }
}

/// The accounts behind the gateway and who may read them.
#[derive(Debug)]
pub struct Accounts {
    list: Vec<Arc<Account>>,
    default: Option<usize>,
    /// Key name → the accounts it may read; a key not here reads every account.
    readers: HashMap<Arc<str>, Vec<usize>>,
}

impl Accounts {
    /// From the built accounts (in configuration order), the settings that say which one is
    /// the default, and `GATEWAY_KEY_ACCOUNTS`.
    pub fn new(
        list: Vec<Arc<Account>>,
        settings: &[AccountSettings],
        key_accounts: Option<&crate::config::KeyAccounts>,
    ) -> Self {
        let default = settings.iter().position(|a| a.default);
        let index_of = |name: &str| list.iter().position(|a| &*a.name == name);
        let readers = key_accounts
            .map_or(&[][..], |k| k.as_slice())
            .iter()
            .map(|(key, names)| {
                (
                    Arc::clone(key),
                    names.iter().filter_map(|n| index_of(n)).collect(),
                )
            })
            .collect();
        Accounts {
            list,
            default,
            readers,
        }
    }

    /// Every account, in configuration order.
    pub fn all(&self) -> &[Arc<Account>] {
        &self.list
    }

    /// The account a request that names none reads.
    pub fn default_account(&self) -> Option<&Arc<Account>> {
        self.default.and_then(|i| self.list.get(i))
    }

    /// The account at `index` (see [`Account::index`]).
    pub fn at(&self, index: usize) -> Option<&Arc<Account>> {
        self.list.get(index)
    }

    /// Whether the key `caller` (an admin key when `admin`) may read the account at `index`.
    pub fn may_read(&self, caller: &str, admin: bool, index: usize) -> bool {
        admin
            || self
                .readers
                .get(caller)
                .is_none_or(|allowed| allowed.contains(&index))
    }

    /// The accounts a request names (`account`, possibly several), or the default one, that
    /// `caller` may read.
    ///
    /// # Errors
    /// 400 naming `account` for an unknown name or when none is named and there is no
    /// default; 403 naming the account the key may not read.
    pub fn resolve(
        &self,
        named: &[String],
        caller: &str,
        admin: bool,
    ) -> Result<Vec<Arc<Account>>, AppError> {
        let chosen: Vec<Arc<Account>> = if named.is_empty() {
            let Some(d) = self.default_account() else {
                return Err(AppError::param(
                    "account",
                    format!(
                        "this gateway serves several accounts and none is the default: name one with `account` ({})",
                        self.names()
                    ),
                ));
            };
            vec![Arc::clone(d)]
        } else {
            let mut out: Vec<Arc<Account>> = Vec::with_capacity(named.len());
            for n in named {
                let Some(a) = self.list.iter().find(|a| *a.name == **n) else {
                    let shown: String = n.chars().take(40).collect();
                    return Err(AppError::param(
                        "account",
                        format!(
                            "unknown account `{shown}`; this gateway serves {}",
                            self.names()
                        ),
                    ));
                };
                if !out.iter().any(|o| o.index == a.index) {
                    out.push(Arc::clone(a));
                }
            }
            out
        };
        if let Some(a) = chosen
            .iter()
            .find(|a| !self.may_read(caller, admin, a.index))
        {
            return Err(AppError::AccountForbidden {
                account: a.name.to_string(),
            });
        }
        Ok(chosen)
    }

    /// [`Accounts::resolve`] for a route that reads one account.
    ///
    /// # Errors
    /// As [`Accounts::resolve`], and 400 when several are named.
    pub fn resolve_one(
        &self,
        named: &[String],
        caller: &str,
        admin: bool,
    ) -> Result<Arc<Account>, AppError> {
        if named.len() > 1 {
            return Err(AppError::param(
                "account",
                "this route reads one account; the summary reads several",
            ));
        }
        let mut one = self.resolve(named, caller, admin)?;
        one.pop()
            .ok_or_else(|| AppError::param("account", "no account"))
    }

    /// The accounts whose vendor account id is `id` (the drop-in route's path).
    pub fn with_account_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Arc<Account>> {
        self.list.iter().filter(move |a| a.account_id == id)
    }

    /// The names, comma-separated, for messages.
    fn names(&self) -> String {
        self.list
            .iter()
            .map(|a| &*a.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
