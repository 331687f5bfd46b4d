//! The procedural macros of Flotilla: `#[remote]` for functions, `#[actor]` for stateful types,
//! `#[main]` for programs that act as driver, worker or head.
//!
//! The generated code registers each function and actor class under a stable name
//! (`module::path::name`) with its signature, so workers running the same program can run it and a
//! caller compiled against another signature gets a clear error instead of garbage.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{
    parse_macro_input, spanned::Spanned, FnArg, GenericArgument, ImplItem, ImplItemFn, Item,
    ItemFn, ItemImpl, Pat, PathArguments, ReturnType, Type,
};

/// Makes a function callable on the cluster: `f.remote(&rt, args…)` returns an `ObjectRef` at
/// once. Each argument may be a value or an `ObjectRef` of the parameter's type. A first
/// parameter of type `&Runtime` receives the runtime of the worker, for nested calls. A function
/// returning `Result<T, E>` yields `ObjectRef<T>`, and an `Err` reaches the caller as an error.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[flotilla::remote] takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    expand_remote(func)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Makes a type an actor. Put it on the struct (a marker that checks the type can move between
/// threads) and on its inherent `impl` block, which must have a constructor `fn new(…) -> Self`.
/// `Type::remote(&rt, args…).await?` creates one on a worker and returns a `TypeHandle` whose
/// methods mirror the `&self`/`&mut self` methods and return `ObjectRef`s.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[flotilla::actor] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as Item);
    let out = match item {
        Item::Struct(s) => {
            let name = &s.ident;
            Ok(quote! {
                #s
                const _: fn() = || {
                    fn __flotilla_actor_is_send<T: ::core::marker::Send + 'static>() {}
                    __flotilla_actor_is_send::<#name>();
                };
            })
        }
        Item::Impl(i) => expand_actor_impl(i),
        other => Err(syn::Error::new(
            other.span(),
            "#[flotilla::actor] goes on a struct and on its impl block",
        )),
    };
    out.unwrap_or_else(|e| e.to_compile_error()).into()
}

/// Turns `async fn main(rt: flotilla::Runtime) -> flotilla::Result<()>` into a program that is a
/// worker when `FLOTILLA_ROLE=worker`, a head when `FLOTILLA_ROLE=head`, and otherwise a driver
/// connected to `FLOTILLA_HEAD` (or to a local cluster it starts).
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    if func.sig.asyncness.is_none() {
        return syn::Error::new(
            func.sig.span(),
            "#[flotilla::main] needs an `async fn main(rt: flotilla::Runtime)`",
        )
        .to_compile_error()
        .into();
    }
    let attrs = &func.attrs;
    let vis = &func.vis;
    let inputs = &func.sig.inputs;
    let output = &func.sig.output;
    let body = &func.block;
    quote! {
        #(#attrs)*
        #vis fn main() -> ::std::process::ExitCode {
            async fn __flotilla_main(#inputs) #output #body
            ::flotilla::__private::run_main(__flotilla_main)
        }
    }
    .into()
}

/// A parameter of a remote function or method.
struct Param {
    name: syn::Ident,
    ty: Type,
}

/// Splits parameters into an optional leading `&Runtime` and the data parameters.
fn params<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<(bool, Vec<Param>)> {
    let mut takes_rt = false;
    let mut out = Vec::new();
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pt) = input else { continue };
        if is_runtime_ref(&pt.ty) {
            if i != 0 || !out.is_empty() {
                return Err(syn::Error::new(
                    pt.span(),
                    "a `&Runtime` parameter must come first",
                ));
            }
            takes_rt = true;
            continue;
        }
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "remote parameters are sent between processes: take them by value",
            ));
        }
        let name = match &*pt.pat {
            Pat::Ident(id) => id.ident.clone(),
            _ => format_ident!("__flotilla_arg{}", out.len()),
        };
        out.push(Param {
            name,
            ty: (*pt.ty).clone(),
        });
    }
    Ok((takes_rt, out))
}

fn is_runtime_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => {
            matches!(&*r.elem, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Runtime"))
        }
        _ => false,
    }
}

/// The value type a caller receives, and whether the function returns a `Result`.
fn output_type(ret: &ReturnType) -> (Type, bool) {
    match ret {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => {
            if let Type::Path(p) = &**ty {
                if let Some(last) = p.path.segments.last() {
                    if last.ident == "Result" {
                        if let PathArguments::AngleBracketed(args) = &last.arguments {
                            if let Some(GenericArgument::Type(ok)) = args.args.first() {
                                return (ok.clone(), true);
                            }
                        }
                    }
                }
            }
            ((**ty).clone(), false)
        }
    }
}

/// The item type of a `Vec<U>` (as written: `Vec<U>`, `std::vec::Vec<U>`), if `ty` is one.
fn vec_item(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Vec" {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            GenericArgument::Type(item) => Some(item),
            _ => None,
        },
        _ => None,
    }
}

/// For a function returning a `Vec<U>`: how its outputs split into items, so a bag can
/// flat-map it (a worker cannot split an encoded `Vec<U>` without knowing `U`).
fn flat_items(name: &syn::Ident, out_ty: &Type) -> TokenStream2 {
    let Some(item) = vec_item(out_ty) else {
        return quote!();
    };
    // Borrowed items can never be decoded as owned values, and the choice below cannot see
    // lifetimes: nothing to register.
    if quote!(#item).to_string().contains('\'') {
        return quote!();
    }
    let split_name = format_ident!("__flotilla_split_{}", name);
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #split_name(
            __bytes: &::flotilla::__private::Bytes,
        ) -> ::core::option::Option<::flotilla::Result<::std::vec::Vec<::flotilla::__private::Bytes>>> {
            #[allow(unused_imports)]
            use ::flotilla::__private::{CannotSplit as _, SplitItems as _};
            // `SplitItems` when the items can be decoded, else `CannotSplit` (one `&` further).
            (&<::flotilla::__private::ItemsOf<#item> as ::core::default::Default>::default())
                .split_items(__bytes)
        }

        ::flotilla::__private::inventory::submit! {
            ::flotilla::__private::FlatItems {
                function: #name::NAME,
                split: #split_name,
            }
        }
    }
}

fn signature_string(params: &[Param], ret: &ReturnType) -> String {
    let tys: Vec<String> = params.iter().map(|p| type_str(&p.ty)).collect();
    let ret = match ret {
        ReturnType::Default => "()".to_string(),
        ReturnType::Type(_, ty) => type_str(ty),
    };
    format!("fn({}) -> {}", tys.join(", "), ret)
}

fn type_str(ty: &Type) -> String {
    normalize(quote!(#ty).to_string())
}

fn normalize(s: String) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Code that turns the function's return value into the task outcome; `rt` is the runtime the
/// task ran with, to which the references inside the value are reported.
fn encode_output(is_result: bool, rt: TokenStream2) -> TokenStream2 {
    if is_result {
        quote! {
            match __out {
                ::core::result::Result::Ok(v) => ::flotilla::__private::encode_result(#rt, &v)
                    .map_err(|e| ::flotilla::__private::TaskFailure::application(e)),
                ::core::result::Result::Err(e) => ::core::result::Result::Err(::flotilla::__private::TaskFailure::application(e)),
            }
        }
    } else {
        quote! {
            ::flotilla::__private::encode_result(#rt, &__out).map_err(|e| ::flotilla::__private::TaskFailure::application(e))
        }
    }
}

fn decode_params(params: &[Param], label: TokenStream2) -> TokenStream2 {
    let n = params.len();
    let decodes = params.iter().enumerate().map(|(i, p)| {
        let name = &p.name;
        let ty = &p.ty;
        quote! {
            let #name: #ty = match ::flotilla::__private::decode_arg(&__args, #i, #label) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => return ::core::result::Result::Err(e),
            };
        }
    });
    quote! {
        if __args.len() != #n {
            return ::core::result::Result::Err(::flotilla::__private::TaskFailure::type_mismatch(
                ::std::format!("{} takes {} arguments but was given {}", #label, #n, __args.len())));
        }
        #(#decodes)*
    }
}

fn push_args(params: &[Param]) -> TokenStream2 {
    let pushes = params.iter().map(|p| {
        let name = &p.name;
        let ty = &p.ty;
        quote! { ::flotilla::__private::IntoArg::<#ty>::push_to(#name, &mut __list); }
    });
    quote! {
        let mut __list = ::flotilla::__private::ArgList::new();
        #(#pushes)*
    }
}

fn expand_remote(func: ItemFn) -> syn::Result<TokenStream2> {
    if !func.sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            func.sig.generics.span(),
            "remote functions cannot be generic: workers look them up by name",
        ));
    }
    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let impl_name = format_ident!("__flotilla_fn_{}", name);
    let invoke_name = format_ident!("__flotilla_invoke_{}", name);
    let (takes_rt, params) = params(func.sig.inputs.iter())?;
    let (out_ty, is_result) = output_type(&func.sig.output);
    let signature = signature_string(&params, &func.sig.output);
    let is_async = func.sig.asyncness.is_some();

    let mut inner = func.clone();
    inner.sig.ident = impl_name.clone();
    inner.vis = syn::Visibility::Inherited;
    let attrs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();

    let arg_names: Vec<_> = params.iter().map(|p| &p.name).collect();
    let arg_tys: Vec<_> = params.iter().map(|p| &p.ty).collect();
    let rt_arg = if takes_rt { quote!(&__rt,) } else { quote!() };
    let decode = decode_params(&params, quote!(#name::NAME));
    let encode = encode_output(is_result, quote!(&__rt));
    let flat = flat_items(name, &out_ty);
    let call = if is_async {
        quote! {
            ::flotilla::__private::Invocation::Async(::std::boxed::Box::pin(async move {
                let __rt = __ctx.rt;
                let __out = #impl_name(#rt_arg #(#arg_names),*).await;
                #encode
            }))
        }
    } else {
        quote! {
            ::flotilla::__private::Invocation::Blocking(::std::boxed::Box::new(move || {
                let __rt = __ctx.rt;
                let __out = #impl_name(#rt_arg #(#arg_names),*);
                #encode
            }))
        }
    };
    let push = push_args(&params);
    let ret_ty = match &func.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, t) => quote!(#t),
    };
    let rt_param = if takes_rt {
        quote!(rt: &::flotilla::Runtime,)
    } else {
        quote!()
    };
    let rt_pass = if takes_rt { quote!(rt,) } else { quote!() };
    let local_call = if is_async {
        quote! {
            /// Runs the function here, in this process.
            #vis async fn call(&self, #rt_param #(#arg_names: #arg_tys),*) -> #ret_ty {
                #impl_name(#rt_pass #(#arg_names),*).await
            }
        }
    } else {
        quote! {
            /// Runs the function here, in this process.
            #vis fn call(&self, #rt_param #(#arg_names: #arg_tys),*) -> #ret_ty {
                #impl_name(#rt_pass #(#arg_names),*)
            }
        }
    };
    let into_args = params.iter().map(|p| {
        let n = &p.name;
        let t = &p.ty;
        quote!(#n: impl ::flotilla::__private::IntoArg<#t>)
    });
    let into_args2 = into_args.clone();
    let into_delayed = params.iter().map(|p| {
        let n = &p.name;
        let t = &p.ty;
        quote!(#n: impl ::flotilla::collections::IntoDelayed<#t>)
    });

    Ok(quote! {
        #inner

        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #name;

        impl #name {
            /// The name workers know this function by.
            pub const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #name_str);
            /// The signature callers are checked against.
            pub const SIGNATURE: &'static str = #signature;

            /// Runs the function on the cluster; each argument may be a value or an `ObjectRef`.
            #vis fn remote(&self, rt: &::flotilla::Runtime, #(#into_args),*) -> ::flotilla::ObjectRef<#out_ty> {
                #push
                rt.call_function(Self::NAME, Self::SIGNATURE, __list, ::core::option::Option::None)
            }

            /// Like `remote`, with per-call options (retries, slots, resources, a name).
            #vis fn remote_with(&self, rt: &::flotilla::Runtime, options: &::flotilla::TaskOptions, #(#into_args2),*) -> ::flotilla::ObjectRef<#out_ty> {
                #push
                rt.call_function(Self::NAME, Self::SIGNATURE, __list, ::core::option::Option::Some(options))
            }

            #local_call

            /// Calls the function lazily: a node of a task graph, run by `compute` or `persist`.
            /// Each argument may be a value, an `ObjectRef` or another `Delayed`.
            #vis fn delayed(&self, #(#into_delayed),*) -> ::flotilla::collections::Delayed<#out_ty> {
                ::flotilla::collections::Delayed::call(
                    Self::NAME,
                    Self::SIGNATURE,
                    ::std::vec![#(::flotilla::collections::IntoDelayed::<#arg_tys>::into_node_arg(#arg_names)),*],
                )
            }
        }

        impl ::flotilla::registry::Remote for #name {
            type Args = (#(#arg_tys,)*);
            type Output = #out_ty;
            const NAME: &'static str = #name::NAME;
            const SIGNATURE: &'static str = #name::SIGNATURE;
        }

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #invoke_name(
            __args: ::std::vec::Vec<::flotilla::__private::Bytes>,
            __ctx: ::flotilla::__private::TaskContext,
        ) -> ::flotilla::__private::Invocation {
            let __decoded = (|| -> ::core::result::Result<_, ::flotilla::__private::TaskFailure> {
                #decode
                ::core::result::Result::Ok((#(#arg_names,)*))
            })();
            let (#(#arg_names,)*) = match __decoded {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => return ::flotilla::__private::Invocation::Failed(e),
            };
            #call
        }

        ::flotilla::__private::inventory::submit! {
            ::flotilla::__private::RemoteFunction {
                name: #name::NAME,
                signature: #name::SIGNATURE,
                invoke: #invoke_name,
                takes_runtime: #takes_rt,
            }
        }

        #flat
    })
}

struct Method<'a> {
    func: &'a ImplItemFn,
    takes_rt: bool,
    params: Vec<Param>,
    out_ty: Type,
    is_result: bool,
    signature: String,
}

fn expand_actor_impl(imp: ItemImpl) -> syn::Result<TokenStream2> {
    if imp.trait_.is_some() {
        return Err(syn::Error::new(
            imp.span(),
            "#[flotilla::actor] goes on the type's inherent impl block, not a trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "actor types cannot be generic: workers look them up by name",
        ));
    }
    let self_ty = &imp.self_ty;
    let type_name = match &**self_ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new(self_ty.span(), "expected a named type"))?;
    let type_str = type_name.to_string();
    let handle = format_ident!("{}Handle", type_name);
    let create_fn = format_ident!("__flotilla_create_{}", type_name);

    let mut ctor: Option<(&ImplItemFn, bool, Vec<Param>, bool)> = None;
    let mut methods = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let has_self = matches!(f.sig.inputs.first(), Some(FnArg::Receiver(_)));
        if has_self {
            if let Some(FnArg::Receiver(r)) = f.sig.inputs.first() {
                if r.reference.is_none() {
                    return Err(syn::Error::new(
                        r.span(),
                        "actor methods take `&self` or `&mut self`",
                    ));
                }
            }
            if f.sig.asyncness.is_some() {
                return Err(syn::Error::new(
                    f.sig.span(),
                    "actor methods run one at a time on the actor's thread: make them plain `fn`s",
                ));
            }
            let (takes_rt, params) = params(f.sig.inputs.iter().skip(1))?;
            let (out_ty, is_result) = output_type(&f.sig.output);
            let signature = signature_string(&params, &f.sig.output);
            methods.push(Method {
                func: f,
                takes_rt,
                params,
                out_ty,
                is_result,
                signature,
            });
        } else if f.sig.ident == "new" {
            let (takes_rt, params) = params(f.sig.inputs.iter())?;
            let returns_result = matches!(output_type(&f.sig.output), (_, true));
            ctor = Some((f, takes_rt, params, returns_result));
        }
    }
    let (ctor_fn, ctor_rt, ctor_params, ctor_result) = ctor.ok_or_else(|| {
        syn::Error::new(
            imp.span(),
            "an actor needs a constructor `fn new(…) -> Self`",
        )
    })?;
    let ctor_sig = signature_string(&ctor_params, &ReturnType::Default)
        .replace("-> ()", &format!("-> {type_str}"));

    let ctor_names: Vec<_> = ctor_params.iter().map(|p| &p.name).collect();
    let ctor_into: Vec<_> = ctor_params
        .iter()
        .map(|p| {
            let n = &p.name;
            let t = &p.ty;
            quote!(#n: impl ::flotilla::__private::IntoArg<#t>)
        })
        .collect();
    let ctor_push = push_args(&ctor_params);
    let ctor_decode = decode_params(&ctor_params, quote!(<#self_ty>::__FLOTILLA_CLASS));
    let ctor_rt_arg = if ctor_rt {
        quote!(&__ctx.rt,)
    } else {
        quote!()
    };
    let ctor_unwrap = if ctor_result {
        quote!(.map_err(|e| ::flotilla::__private::TaskFailure::application(e))?)
    } else {
        quote!()
    };
    let _ = ctor_fn;

    let rt_methods: Vec<String> = methods
        .iter()
        .filter(|m| m.takes_rt)
        .map(|m| m.func.sig.ident.to_string())
        .collect();
    let handle_methods = methods.iter().map(|m| {
        let name = &m.func.sig.ident;
        let name_str = name.to_string();
        let sig = &m.signature;
        let out = &m.out_ty;
        let into = m.params.iter().map(|p| {
            let n = &p.name;
            let t = &p.ty;
            quote!(#n: impl ::flotilla::__private::IntoArg<#t>)
        });
        let push = push_args(&m.params);
        let docs: Vec<_> = m
            .func
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .collect();
        quote! {
            #(#docs)*
            pub fn #name(&self, #(#into),*) -> ::flotilla::ObjectRef<#out> {
                #push
                self.inner.call(#name_str, #sig, __list)
            }
        }
    });
    let arms = methods.iter().map(|m| {
        let name = &m.func.sig.ident;
        let name_str = name.to_string();
        let sig = &m.signature;
        let names: Vec<_> = m.params.iter().map(|p| &p.name).collect();
        let decode = decode_params(&m.params, quote!(#name_str));
        let rt_arg = if m.takes_rt { quote!(&__ctx.rt,) } else { quote!() };
        let encode = encode_output(m.is_result, quote!(&__ctx.rt));
        quote! {
            #name_str => {
                if !__signature.is_empty() && __signature != #sig {
                    return ::core::result::Result::Err(::flotilla::__private::TaskFailure::type_mismatch(::std::format!(
                        "{}.{} has signature `{}` here but the caller compiled against `{}`",
                        #type_str, #name_str, #sig, __signature)));
                }
                #decode
                let __out = self.#name(#rt_arg #(#names),*);
                #encode
            }
        }
    });

    Ok(quote! {
        #imp

        /// A handle to a remote actor; its methods run on the actor's worker, in call order.
        #[derive(Debug, Clone)]
        pub struct #handle {
            inner: ::flotilla::__private::ActorHandle,
        }

        impl #handle {
            #(#handle_methods)*

            /// The untyped handle.
            pub fn actor(&self) -> &::flotilla::__private::ActorHandle {
                &self.inner
            }
        }

        impl #self_ty {
            #[doc(hidden)]
            pub const __FLOTILLA_CLASS: &'static str = ::core::concat!(::core::module_path!(), "::", #type_str);

            /// Creates the actor on a worker and waits until its constructor ran.
            pub async fn remote(rt: &::flotilla::Runtime, #(#ctor_into),*) -> ::flotilla::Result<#handle> {
                Self::remote_with(rt, &::flotilla::ActorOptions::default(), #(#ctor_names),*).await
            }

            /// Like `remote`, with options: a name to look it up by, `max_restarts`, `detached`.
            pub async fn remote_with(rt: &::flotilla::Runtime, options: &::flotilla::ActorOptions, #(#ctor_into),*) -> ::flotilla::Result<#handle> {
                #ctor_push
                let inner = ::flotilla::__private::ActorHandle::create(rt, Self::__FLOTILLA_CLASS, #ctor_sig, __list, options).await?;
                ::core::result::Result::Ok(#handle { inner })
            }

            /// Finds a live actor of this type by name.
            pub async fn lookup(rt: &::flotilla::Runtime, name: &str) -> ::flotilla::Result<#handle> {
                let inner = ::flotilla::__private::ActorHandle::lookup(rt, name, Self::__FLOTILLA_CLASS).await?;
                ::core::result::Result::Ok(#handle { inner })
            }
        }

        impl ::flotilla::__private::ActorInstance for #self_ty {
            fn takes_runtime(&self, __method: &str) -> bool {
                let __blocking: &[&str] = &[#(#rt_methods),*];
                __blocking.contains(&__method)
            }

            fn call(
                &mut self,
                __method: &str,
                __signature: &str,
                __args: ::std::vec::Vec<::flotilla::__private::Bytes>,
                __ctx: ::flotilla::__private::TaskContext,
            ) -> ::core::result::Result<::flotilla::__private::Bytes, ::flotilla::__private::TaskFailure> {
                let _ = &__ctx;
                match __method {
                    #(#arms)*
                    other => ::core::result::Result::Err(::flotilla::__private::TaskFailure::new(
                        ::flotilla::ErrorKind::UnknownFunction,
                        ::std::format!("{} has no method {}", #type_str, other))),
                }
            }
        }

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #create_fn(
            __args: ::std::vec::Vec<::flotilla::__private::Bytes>,
            __ctx: ::flotilla::__private::TaskContext,
        ) -> ::core::result::Result<::std::boxed::Box<dyn ::flotilla::__private::ActorInstance>, ::flotilla::__private::TaskFailure> {
            #ctor_decode
            let __actor = <#self_ty>::new(#ctor_rt_arg #(#ctor_names),*) #ctor_unwrap;
            ::core::result::Result::Ok(::std::boxed::Box::new(__actor))
        }

        ::flotilla::__private::inventory::submit! {
            ::flotilla::__private::ActorClass {
                name: <#self_ty>::__FLOTILLA_CLASS,
                signature: #ctor_sig,
                create: #create_fn,
            }
        }
    })
}
