//! Who may connect, and what a client may publish, subscribe to and receive: Mosquitto's `allow_anonymous`,
//! `password_file` and `acl_file`, with the files read by `skein-auth`. The binary loads them (and reloads them on
//! SIGHUP); the broker asks.

use skein_auth::{Access, Acl, ClientIdentity, PasswordFile};
use skein_codec::ReasonCode;

/// The loaded files. Without a password file, user names are taken as given; without an ACL file, everything is
/// allowed.
#[derive(Debug, Default)]
pub struct Auth {
    pub passwords: Option<PasswordFile>,
    pub acl: Option<Acl>,
}

impl Auth {
    /// Checks a CONNECT's credentials. The refusal is MQTT 5.0's 0x86 for a wrong password or unknown user and
    /// 0x87 for an anonymous client where none may connect; 3.x clients hear return code 5 for both, as from
    /// Mosquitto.
    pub fn authenticate(
        &self,
        allow_anonymous: bool,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode> {
        match (username, &self.passwords) {
            (None, _) if allow_anonymous => Ok(()),
            (None, _) => Err(ReasonCode::NotAuthorized),
            (Some(user), Some(file)) => {
                // Every user name costs one hash, known or not: the time taken tells nothing about who exists.
                if file.verify(user, password.unwrap_or_default()) {
                    Ok(())
                } else {
                    Err(ReasonCode::BadUserNameOrPassword)
                }
            }
            // A user name and no file to check it against: Mosquitto lets it through when anonymous clients may
            // connect, and refuses it otherwise.
            (Some(_), None) if allow_anonymous => Ok(()),
            (Some(_), None) => Err(ReasonCode::NotAuthorized),
        }
    }

    /// May this client do `access` on `topic` (a topic name, or a filter for [`Access::Subscribe`])?
    pub fn allows(&self, username: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl.check(&ClientIdentity { username, client_id }, topic, access),
        }
    }

    /// Whether an ACL is in force (a per-delivery check is needed).
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }
}

/// An MQTT 5.0 enhanced authentication method (section 4.12), such as SCRAM or a token check: the broker carries
/// its AUTH exchange with the client, at CONNECT and at re-authentication, and asks the method at each step.
/// Register one with [`crate::Broker::add_auth_method`]; a CONNECT naming a method nobody registered is refused with
/// 0x8C.
pub trait AuthMethod: Send + Sync + 'static {
    /// The Authentication Method name a client asks for.
    fn name(&self) -> &str;
    /// A new exchange with client `client_id`.
    fn start(&self, client_id: &str) -> Box<dyn AuthExchange>;
}

/// One client's exchange with an [`AuthMethod`].
pub trait AuthExchange: Send + Sync {
    /// The client's Authentication Data (from the CONNECT, or its next AUTH packet); what to answer.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// What an exchange step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send the client this Authentication Data in an AUTH 0x18 (Continue authentication) and wait for its answer.
    Continue(Option<Vec<u8>>),
    /// Authenticated: optional final data for the CONNACK (or AUTH 0x00), and the user name the ACL is to know the
    /// client by (`None` keeps the CONNECT's).
    Success { data: Option<Vec<u8>>, username: Option<String> },
    /// Refused: CONNACK 0x87, or DISCONNECT 0x87 on a re-authentication.
    Failure,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_semantics_of_allow_anonymous_and_password_file() {
        let line = skein_auth::Hash::new(b"secret", skein_auth::Algorithm::Sha512).unwrap();
        let passwords = PasswordFile::parse(&format!("alice:{line}\n"), "pw").unwrap();
        let with_file = Auth { passwords: Some(passwords), acl: None };
        assert_eq!(with_file.authenticate(false, Some("alice"), Some(b"secret")), Ok(()));
        assert_eq!(
            with_file.authenticate(false, Some("alice"), Some(b"wrong")),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(with_file.authenticate(true, Some("bob"), Some(b"secret")), Err(ReasonCode::BadUserNameOrPassword));
        assert_eq!(with_file.authenticate(false, None, None), Err(ReasonCode::NotAuthorized));
        assert_eq!(with_file.authenticate(true, None, None), Ok(()));
        let none = Auth::default();
        assert_eq!(none.authenticate(true, Some("anyone"), None), Ok(()));
        assert_eq!(none.authenticate(false, Some("anyone"), None), Err(ReasonCode::NotAuthorized));
        assert!(none.allows(None, "c", "any/topic", Access::Write));
    }
}
